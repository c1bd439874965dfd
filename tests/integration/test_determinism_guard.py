"""The determinism guard under a real worker: a workflow that reads the wall clock, even
one that swallows the error, fails its workflow task (history untouched) until fixed code
runs; workflow.now() and workflow.logger work."""

from __future__ import annotations

import datetime as dt

from cairn import workflow
from support import events, run_status, running_worker, wait_until


@workflow.defn(name="stamp")
async def stamp_wall_clock() -> str:
    try:
        return dt.datetime.now(dt.UTC).isoformat()
    except Exception:  # hides the violation: the task must fail anyway
        return "no clock"


@workflow.defn(name="stamp")
async def stamp_workflow_time() -> str:
    workflow.logger.info("stamping")
    return workflow.now().isoformat()


async def test_a_swallowed_wall_clock_read_fails_the_task_until_fixed(client, db_url, sql):
    async with running_worker(db_url, workflows=[stamp_wall_clock]) as worker:
        handle = await client.start(stamp_wall_clock, id="stamp-1")

        async def failed_task():
            task = (await handle.describe()).workflow_task
            return task if task and task["failures"] >= 1 else None

        task = await wait_until(failed_task, timeout=15, what="a failed workflow task")
        assert worker.stats.workflow_task_failures >= 1
    assert task["last_error"]["type"] == "DeterminismViolation"
    assert "datetime.now()" in task["last_error"]["message"]
    assert "workflow.now()" in task["last_error"]["message"]
    assert [t for _, t, _ in events(sql, handle.run_id)] == ["WorkflowStarted"]
    assert run_status(sql, handle.run_id) == "running"

    sql("UPDATE cairn.workflow_tasks SET available_at = now() WHERE run_id = %s", (handle.run_id,))
    async with running_worker(db_url, workflows=[stamp_workflow_time]):
        stamped = await handle.result(timeout=20)
    started = sql("SELECT at FROM cairn.history WHERE run_id = %s AND type = 'WorkflowTaskStarted'",
                  (handle.run_id,))[0][0]
    assert dt.datetime.fromisoformat(stamped) == started
