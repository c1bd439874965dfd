"""samples-python message_passing/waiting_for_handlers_and_compensation, ported: on success
the caller gets the update's result; when the run fails or is cancelled before the update's
work is done, the update handler (racing its work against the run's exit with
``workflow.wait``) fails the update and compensates, and the run waits for it, then
compensates itself. Asserts what the starter prints (the sample's README shows the same
outcomes, in Temporal's words) and the activities each run scheduled."""

from __future__ import annotations

from support import events

from . import waiting_for_handlers_and_compensation as sample


async def test_prints_what_the_sample_prints(client, start_worker, sql, capsys):
    await start_worker(workflows=[sample.WaitingForHandlersAndCompensationWorkflow],
                       activities=[sample.activity_executed_by_update_handler,
                                   sample.activity_executed_by_update_handler_to_perform_compensation,
                                   sample.activity_executed_to_perform_workflow_compensation],
                       queues=[sample.TASK_QUEUE])
    await sample.main(client)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    exited = "The update failed because the workflow run exited"
    assert lines[0::3] == ["workflow exit type: SUCCESS", "workflow exit type: FAILURE",
                           "workflow exit type: CANCELLATION"]
    assert lines[1:3] == ["    🟢 caller received update result", "    🟢 caller received workflow result"]
    for update_line in (lines[4], lines[7]):  # "...: {e}: {e.__cause__}", the cause being the handler's error
        assert update_line.startswith("    🔴 caught exception while waiting for update result: update '")
        assert update_line.endswith(f"' of workflow 'my-workflow-id' failed: ApplicationError: {exited}: {exited}")
    assert lines[5] == ("    🔴 caught exception while waiting for workflow result: workflow 'my-workflow-id' "
                        "failed: ApplicationError: deliberately failing workflow: deliberately failing workflow")
    assert lines[8] == ("    🔴 caught exception while waiting for workflow result: "
                        "workflow 'my-workflow-id' was cancelled: ")
    assert len(lines) == 9

    runs = sql("SELECT run_id::text, status FROM cairn.runs ORDER BY created_at")
    assert [status for _, status in runs] == ["completed", "failed", "cancelled"]
    scheduled = [[d["activity_type"] for _, t, d in events(sql, run_id) if t == "ActivityScheduled"]
                 for run_id, _ in runs]
    compensated = ["activity_executed_by_update_handler",
                   "activity_executed_by_update_handler_to_perform_compensation",
                   "activity_executed_to_perform_workflow_compensation"]
    assert scheduled == [["activity_executed_by_update_handler"], compensated, compensated]
