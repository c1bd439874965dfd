"""Start -> complete, end to end on a real database."""

from __future__ import annotations

import json
from datetime import timedelta

from cairn import activity, workflow
from support import wait_until


@activity.defn
async def double(x: int) -> int:
    return x * 2


@workflow.defn
async def doubler(x: int) -> int:
    y = await workflow.execute_activity(double, x, start_to_close_timeout=timedelta(seconds=10))
    await workflow.sleep(0.1)
    return y + 1


async def test_start_to_complete(client, start_worker, sql):
    await start_worker(workflows=[doubler], activities=[double])
    handle = await client.start(doubler, 20, id="smoke-1")
    assert await handle.result(timeout=20) == 41
    types = [t for (t,) in sql("SELECT type FROM cairn.history ORDER BY seq")]
    assert types == ["WorkflowStarted", "WorkflowTaskStarted", "ActivityScheduled", "WorkflowTaskStarted",
                     "ActivityCompleted", "TimerStarted", "WorkflowTaskStarted", "TimerFired",
                     "WorkflowCompleted"]
    assert sql("SELECT status FROM cairn.runs") == [("completed",)]
    for table in ("workflow_tasks", "activity_tasks", "timers", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table}") == [(0,)], table


async def test_worker_close_notifies_listeners(client, start_worker, db_url):
    """The statement that closes a run also sends cairn_closed (what result() waits on)."""
    import psycopg

    await start_worker(workflows=[doubler], activities=[double])
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as spy:
        await spy.execute("LISTEN cairn_closed")
        handle = await client.start(doubler, 1, id="smoke-notify")
        payloads = [note.payload async for note in spy.notifies(timeout=10, stop_after=1)]
    # The run id, then the outcome (small enough to ride along): result() needs no read.
    [(run_id, outcome)] = [(p.partition(" ")[0], json.loads(p.partition(" ")[2])) for p in payloads]
    assert run_id == handle.run_id
    assert outcome == {"status": "completed", "workflow_type": "doubler", "last_type": "WorkflowCompleted",
                       "last_data": {"result": 3}}


async def test_an_activity_not_leased_eagerly_wakes_its_queue(client, start_worker, sql, db_url):
    """The record that schedules an activity its worker does not run NOTIFYs the activity's
    queue (cairn_activity, payload the queue: record_workflow_tasks' RETURNING); one leased
    eagerly sends nothing (its worker runs it at once)."""
    import psycopg

    async def queue_wakes(workflow_id: str) -> list[str]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as spy:
            await spy.execute("LISTEN cairn_activity")
            await client.start(doubler, 1, id=workflow_id)
            await wait_until(lambda: sql("SELECT count(*) FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                                         "WHERE r.workflow_id = %s AND h.type = 'ActivityScheduled'",
                                         [workflow_id])[0][0] == 1)
            return [n.payload async for n in spy.notifies(timeout=0.5)]

    runs_only = await start_worker(workflows=[doubler], activities=[])
    assert await queue_wakes("not-eager") == ["default"]
    assert sql("SELECT lease_owner FROM cairn.activity_tasks") == [(None,)]
    runs_only.stop()  # claims no more: the next run is the second worker's
    await start_worker(workflows=[doubler], activities=[double])
    assert await queue_wakes("eager") == []
