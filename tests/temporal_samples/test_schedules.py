"""samples-python schedules/, ported: the scripts run in the order its README gives, with the
worker running; each asserts what the script prints (or, for the silent ones, what it did)."""

from __future__ import annotations

from support import wait_until

from . import schedules as sample


async def test_schedules_sample(db_url, sql, capsys, client):
    async with sample.run_worker(db_url):
        await sample.start_schedule(db_url)
        await sample.describe_schedule(db_url)
        assert capsys.readouterr().out == "Returns the note: Here's a note on my Schedule.\n"

        await sample.list_schedule(db_url)
        out = capsys.readouterr().out
        assert out.startswith("List Schedule Info: {'workflow_type': 'YourSchedulesWorkflow', 'paused': False, "
                              "'note': \"Here's a note on my Schedule.\", 'next_action_time': ")
        assert out.endswith("}.\n")

        await sample.pause_schedule(db_url)
        await sample.describe_schedule(db_url)
        assert capsys.readouterr().out == "Returns the note: Pausing the schedule for now\n"

        # A trigger starts the workflow now; it greets the schedule's argument.
        await sample.trigger_schedule(db_url)
        [(run_id,)] = await wait_until(lambda: sql(
            "SELECT run_id FROM cairn.runs WHERE workflow_id LIKE 'schedules-workflow-id-%%' "
            "AND status = 'completed'"), timeout=20)
        [(result,)] = sql("SELECT data->'result' FROM cairn.history WHERE run_id = %s AND type = 'WorkflowCompleted'",
                          (run_id,))
        assert result == "Hello, my schedule arg!"

        # The backfill acts on the every-2-minutes slots in the minute ten minutes ago.
        await sample.backfill_schedule(db_url)
        backfilled = sql("SELECT slot, status FROM cairn.schedule_actions WHERE kind = 'backfill'")
        assert len(backfilled) <= 1
        assert all(slot.minute % 2 == 0 and slot.second == 0 and status == "started" for slot, status in backfilled)

        await sample.update_schedule(db_url)
        described = await client.get_schedule_handle("workflow-schedule-id").describe()
        assert described.schedule.action.args == ["my new schedule arg"]

        await sample.delete_schedule(db_url)
        assert sql("SELECT count(*) FROM cairn.schedules") == [(0,)]
