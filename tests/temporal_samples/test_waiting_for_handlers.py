"""samples-python message_passing/waiting_for_handlers, ported: whether the run succeeds,
fails or is cancelled, it waits for its update handler, so the caller always receives the
update's result; then the workflow's outcome."""

from __future__ import annotations

from . import waiting_for_handlers as sample


async def test_waiting_for_handlers_prints_what_the_sample_prints(client, start_worker, capsys):
    await start_worker(workflows=[sample.WaitingForHandlersWorkflow],
                       activities=[sample.activity_executed_by_update_handler], queues=[sample.TASK_QUEUE])
    await sample.main(client)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert lines[0::3] == ["workflow exit type: SUCCESS", "workflow exit type: FAILURE",
                           "workflow exit type: CANCELLATION"]
    assert lines[1::3] == ["    🟢 caller received update result"] * 3
    assert lines[2] == "    🟢 caller received workflow result"
    assert lines[5].startswith("    🔴 caught exception while waiting for workflow result: ")
    assert "deliberately failing workflow" in lines[5]
    assert lines[8].startswith("    🔴 caught exception while waiting for workflow result: ")
    assert "cancel" in lines[8]
    assert len(lines) == 9
