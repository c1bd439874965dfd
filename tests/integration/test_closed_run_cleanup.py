"""An event that reaches a run as it closes leaves nothing behind.

`signal_run` checks that the run is open with its statement's snapshot, then waits on the
run's task-row lock; if the run closes meanwhile, the writer re-creates the task and its
inbox row stays. The state that race leaves is built here directly (the race itself is a
window of one lock wait): the next claim of the task must drop both rows."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from cairn import workflow
from support import wait_until


@workflow.defn
async def quick() -> str:
    return "done"


async def test_a_task_of_a_closed_run_takes_its_late_inbox_rows_with_it(client, start_worker, sql):
    await start_worker(workflows=[quick])
    handle = await client.start(quick, id="closes-fast")
    assert await handle.result(timeout=10) == "done"
    # What the race leaves: a late event and a task row for the closed run.
    sql("INSERT INTO cairn.inbox (run_id, type, data) VALUES (%s, 'SignalReceived', %s)",
        (handle.run_id, Jsonb({"name": "late", "payload": None})))
    sql("INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type) VALUES (%s, 'default', 'default', "
        "'quick')",
        (handle.run_id,))
    sql("SELECT pg_notify('cairn_workflow', 'default')")
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.workflow_tasks WHERE run_id = %s",
                                 (handle.run_id,)) == [(0,)], what="the task of the closed run to be dropped")
    assert sql("SELECT count(*) FROM cairn.inbox WHERE run_id = %s", (handle.run_id,)) == [(0,)]
    # The run's history is untouched: the late event never became part of it.
    assert [t for (t,) in sql("SELECT type FROM cairn.history WHERE run_id = %s ORDER BY seq",
                              (handle.run_id,))][-1] == "WorkflowCompleted"
