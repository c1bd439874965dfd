"""The worker's housekeeping: due timers, due schedules, expired attempts, batches nobody
executes, the queue-depth gauge, the pollers' wake-up when work falls due, and the LISTEN
connection that wakes them on a NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from cairn import telemetry as _telemetry
from cairn.store import batches, schedules
from cairn.store import maintenance as store
from cairn.worker.activities import REAP_LIMIT
from cairn.worker.stats import WorkerStats
from cairn.worker.wakes import Pools, Wakes, loop_failed

log = logging.getLogger("cairn.worker")

QUEUE_DEPTH_CAP = 100_000      # cairn.queue.depth counts at most this many ready tasks per queue and kind
TIMER_BATCH = 100              # timers fired per statement (a full batch fires again at once)
BATCH_CHECK_SECONDS = 5.0      # how often a worker looks for a running batch that nobody executes
MAX_BATCHES_EXECUTING = 2      # batches one worker executes at once (each holds one engine connection)


class Maintenance:
    """Fires due timers, times out expired attempts, measures queue depth, and wakes the
    pollers when work falls due or a NOTIFY arrives."""

    def __init__(self, *, pools: Pools, stats: WorkerStats, wakes: Wakes, queues: list[str], namespace: str,
                 next_due_params: dict[str, Any], reap_expired: Callable[[], Awaitable[int]],
                 rng: random.Random) -> None:
        self._pools = pools
        self._stats = stats
        self._wakes = wakes
        self._queues = queues
        self._namespace = namespace
        self._next_due_params = next_due_params  # the worker's (queue, type) pairs, as next_due takes them
        self._reap_expired = reap_expired  # the activity runner's
        self._rng = rng
        self._batches: dict[str, asyncio.Task[None]] = {}  # batch id -> its executor here
        self._batches_checked = float("-inf")  # loop time of the last look for batches

    async def run(self) -> None:
        """Fires due timers, times out expired attempts, and wakes pollers when work is due."""
        try:
            await self._run()
        finally:
            for task in self._batches.values():
                task.cancel()  # a cancelled chunk rolls back; the batch stays running for the next executor
            for task in list(self._batches.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        wakes = self._wakes
        while not wakes.stopping.is_set():
            wakes.maintenance.clear()
            wait = wakes.poll_interval
            try:
                while await self.fire_timers() >= TIMER_BATCH:
                    pass
                while await self._reap_expired() >= REAP_LIMIT:
                    pass
                while await schedules.fire_due(self._pools.main()) >= schedules.FIRE_BATCH:
                    pass
                scheduled = await schedules.next_due(self._pools.main())
                if scheduled is not None:  # the next schedule's slot: this loop fires it
                    wait = min(wait, max(scheduled.total_seconds(), 0.0) + 0.005)
                if _telemetry.queue_depth.due():
                    await self.measure_queue_depth()
                await self.resume_batches()
                due = await store.next_due(self._pools.main(), self._next_due_params)
                if due is not None:
                    if due.total_seconds() <= 0:
                        wakes.workflow_poller()
                        wakes.activity.set()
                        wait = min(wait, 0.05) if due.total_seconds() > -1 else wait
                    else:
                        wait = min(wait, due.total_seconds() + 0.005)
            except Exception as exc:
                loop_failed("maintenance pass", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakes.maintenance.wait(), wait * self._rng.uniform(0.9, 1.0) if wait > 0.1
                                       else wait)

    async def resume_batches(self) -> None:
        """Every :data:`BATCH_CHECK_SECONDS`, starts executing (in a task of its own, off
        this loop) the running batches that nobody executes: created by a client that did
        not wait, or whose executor died (its lock went with its connection)."""
        now = asyncio.get_running_loop().time()
        if now - self._batches_checked < BATCH_CHECK_SECONDS or len(self._batches) >= MAX_BATCHES_EXECUTING:
            return
        self._batches_checked = now
        for batch_id in await batches.running(self._pools.main()):
            if batch_id in self._batches or len(self._batches) >= MAX_BATCHES_EXECUTING:
                continue
            self._batches[batch_id] = asyncio.create_task(self._execute_batch(batch_id), name=f"cairn-batch-{batch_id}")

    async def _execute_batch(self, batch_id: str) -> None:
        try:
            if await batches.execute(self._pools.main(), batch_id,
                                     executor=f"{socket.gethostname()}:{os.getpid()} (worker)"):
                log.info("batch %s: executed to its end here", batch_id)
        except Exception as exc:
            loop_failed(f"batch {batch_id}", exc)
        finally:
            self._batches.pop(batch_id, None)

    async def measure_queue_depth(self) -> None:
        """Counts ready work on this worker's queues for the ``cairn.queue.depth`` gauge."""
        _telemetry.queue_depth.update(await store.queue_depth(
            self._pools.main(), queues=self._queues, namespace=self._namespace, cap=QUEUE_DEPTH_CAP))

    async def fire_timers(self) -> int:
        """Turns due timers into inbox events; returns how many fired."""
        fired, queues = await store.fire_due_timers(self._pools.main(), limit=TIMER_BATCH)
        for queue in queues:
            if queue in self._queues:
                self._wakes.workflow_poller()
        self._stats.timers_fired += fired
        return fired

    async def listen(self, url: str) -> None:
        """Keeps one connection LISTENing; a NOTIFY for one of our queues wakes a poller."""
        wakes = self._wakes
        while not wakes.stopping.is_set():
            try:
                # Once listening, catch up on anything missed while away.
                async for channel, payload in store.listen(url, wakes.everything):
                    if channel == "cairn_timer":
                        wakes.maintenance.set()
                    elif channel == "cairn_query":
                        if payload in self._queues:
                            wakes.query.set()
                    elif payload in self._queues:
                        if channel == "cairn_workflow":
                            wakes.workflow_poller()
                        else:
                            wakes.activity.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listen connection lost (%s); polling until it is back", exc)
                await asyncio.sleep(1.0)
