"""The worker's instance cache: with room for one instance, interleaved runs are replayed on
every miss and still complete, with the same deterministic values."""

from __future__ import annotations

import asyncio

from cairn import activity, workflow
from support import events


@activity.defn
async def echo(value: str) -> str:
    return value


@workflow.defn
async def interleaved(n: int) -> dict[str, object]:
    token = str(workflow.uuid4())          # seeded per run: the same on every replay
    roll = workflow.random().randint(0, 10**9)
    first = await workflow.execute_activity(echo, f"{token}/{n}", start_to_close_timeout=10)
    await workflow.sleep(0.2 + 0.05 * n)
    second = await workflow.execute_activity(echo, str(roll), start_to_close_timeout=10)
    return {"token": token, "first": first, "roll": roll, "second": second}


async def test_cache_of_one_replays_and_completes(client, start_worker, sql):
    n = 6
    # Start everything before the worker so the runs' tasks interleave.
    handles = [await client.start(interleaved, i, id=f"cache-{i}") for i in range(n)]
    worker = await start_worker(workflows=[interleaved], activities=[echo], cache_size=1)
    results = await asyncio.gather(*(h.result(timeout=30) for h in handles))

    for i, (h, out) in enumerate(zip(handles, results, strict=True)):
        # Values drawn before any replay match those seen after several replays.
        assert out["first"] == f"{out['token']}/{i}"
        assert out["second"] == str(out["roll"])
        scheduled = [d["input"] for _, t, d in events(sql, h.run_id) if t == "ActivityScheduled"]
        assert scheduled == [[f"{out['token']}/{i}"], [str(out["roll"])]]
    assert len({out["token"] for out in results}) == n

    # Each run's first task is a miss anyway; the cache of one forced replays beyond that.
    assert worker.stats.cache_misses > n
    tasks = sql("SELECT count(*) FROM cairn.history WHERE type = 'WorkflowTaskStarted'")[0][0]
    assert worker.stats.cache_hits + worker.stats.cache_misses == tasks
    assert worker.stats.workflow_task_failures == 0
    assert sql("SELECT status, count(*) FROM cairn.runs GROUP BY status") == [("completed", n)]
