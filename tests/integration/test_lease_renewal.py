"""Lease renewals on a busy worker: they have a session of their own, so a worker whose
engine pool is taken (claims, records, outcome writes queued on a loaded host) still keeps
the leases of the attempts it runs. On the engine's pool a renewal waited behind them, the
lease of a live attempt lapsed, and the reaper ran it again as WorkerLost."""

from __future__ import annotations

import asyncio

from cairn import activity, workflow
from support import wait_until

LEASE_SECONDS = 3.0
GATE = asyncio.Event()


@activity.defn
async def held() -> int:
    await GATE.wait()
    return activity.info().attempt


@workflow.defn
async def holding() -> int:
    return int(await workflow.execute_activity(held, start_to_close_timeout=60))


async def test_a_lease_is_renewed_while_the_engine_pool_is_busy(client, start_worker, sql):
    GATE.clear()
    worker = await start_worker(workflows=[holding], activities=[held], lease_seconds=LEASE_SECONDS)
    handle = await client.start(holding, id="lease-1")

    def lease() -> list[tuple[object, ...]]:
        return sql("SELECT lease_owner, lease_expires_at, attempt, lease_expires_at > clock_timestamp() "
                   "FROM cairn.activity_tasks WHERE run_id = %s", (str(handle.run_id),))

    await wait_until(lambda: lease() and lease()[0][0] == worker.identity, what="the attempt to run")
    engine = worker._pools.main()
    taken = [await engine.getconn() for _ in range(engine.max_size)]  # the busy worker's pool
    try:
        first = lease()[0][1]
        # Past the lease the attempt had when the pool filled up: it was renewed meanwhile.
        await wait_until(lambda: sql("SELECT clock_timestamp() > %s", (first,)) == [(True,)],
                         timeout=3 * LEASE_SECONDS, what="the first lease's end")
        owner, expires, attempt, live = lease()[0]
        assert (owner, attempt, live) == (worker.identity, 1, True), f"the lease lapsed at {expires}"
        assert expires > first
    finally:
        for conn in taken:
            await engine.putconn(conn)
        GATE.set()
    assert await handle.result(timeout=30) == 1
