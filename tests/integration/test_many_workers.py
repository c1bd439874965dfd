"""Several workers on one database share the work without duplicating any of it."""

from __future__ import annotations

import asyncio
from collections import Counter

from cairn import activity, workflow
from support import wait_until

_calls: Counter[tuple[str, str]] = Counter()


@activity.defn
async def step(workflow_id: str, name: str, value: int) -> int:
    _calls[(workflow_id, name)] += 1
    await asyncio.sleep(0)
    return value + 1


@workflow.defn
async def pipeline(n: int) -> int:
    wid = workflow.info().workflow_id
    a = await workflow.execute_activity(step, wid, "a", n, start_to_close_timeout=30)
    # Two in parallel, then a join.
    b, c = await asyncio.gather(
        workflow.execute_activity(step, wid, "b", a, start_to_close_timeout=30),
        workflow.execute_activity(step, wid, "c", a * 10, start_to_close_timeout=30),
    )
    return b + c


async def test_three_workers_fifty_workflows(client, start_worker, sql):
    _calls.clear()
    workers = [await start_worker(workflows=[pipeline], activities=[step], identity=f"w{i}")
               for i in range(3)]
    handles = await asyncio.gather(*(client.start(pipeline, i, id=f"pipe-{i}") for i in range(50)))
    results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert results == [(i + 2) + ((i + 1) * 10 + 1) for i in range(50)]

    assert sql("SELECT status, count(*) FROM cairn.runs GROUP BY status") == [("completed", 50)]
    # Every scheduled activity has exactly one outcome event, and it is a completion.
    rows = sql("""
        SELECT s.run_id, s.seq,
               count(o.seq) FILTER (WHERE o.type = 'ActivityCompleted'),
               count(o.seq) FILTER (WHERE o.type = 'ActivityFailed')
        FROM cairn.history s
        LEFT JOIN cairn.history o ON o.run_id = s.run_id
             AND o.type IN ('ActivityCompleted', 'ActivityFailed')
             AND (o.data ->> 'activity_seq')::int = s.seq
        WHERE s.type = 'ActivityScheduled'
        GROUP BY s.run_id, s.seq""")
    assert len(rows) == 150
    assert {(c, f) for _, _, c, f in rows} == {(1, 0)}
    # Seqs per run are exactly 1..n: none duplicated, none skipped.
    gaps = sql("""
        SELECT run_id FROM cairn.history GROUP BY run_id
        HAVING count(*) <> max(seq) OR min(seq) <> 1 OR count(DISTINCT seq) <> count(*)""")
    assert gaps == []
    assert sql("SELECT count(DISTINCT run_id) FROM cairn.history") == [(50,)]
    # Each activity body ran once (no lease was lost, so no retry was needed).
    assert len(_calls) == 150
    assert set(_calls.values()) == {1}
    # Worker counters move when the write's reply is processed, which may trail the commit
    # that let the workflows finish: wait (bounded) for them to settle.
    await wait_until(lambda: sum(w.stats.activities_completed for w in workers) == 150, timeout=5,
                     what="150 completions counted by the workers")
    assert sum(w.stats.activities_retried + w.stats.activities_failed for w in workers) == 0
    # Each run has 3 workflow tasks: start, after a, after b and c (maybe split in two).
    assert sum(w.stats.workflow_tasks for w in workers) == sql(
        "SELECT count(*) FROM cairn.history WHERE type = 'WorkflowTaskStarted'")[0][0]
    # The work was shared: more than one worker ran workflow tasks.
    owners = sql("SELECT DISTINCT data ->> 'worker' FROM cairn.history WHERE type = 'WorkflowTaskStarted'")
    assert len(owners) >= 2
    for table in ("workflow_tasks", "activity_tasks", "timers", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table}") == [(0,)], table
