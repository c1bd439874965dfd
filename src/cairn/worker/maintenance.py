"""The worker's housekeeping: due timers, due schedules, expired attempts, batches nobody
executes, the queue-depth gauge, the pollers' wake-up when work falls due, the LISTEN
connection that wakes them on a NOTIFY, and the worker's heartbeat (its row in
``cairn.workers``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from cairn import telemetry as _telemetry
from cairn.store import batches, schedules
from cairn.store import maintenance as store
from cairn.store.workers import HeartbeatSession, Load, Registration
from cairn.worker.activities import REAP_LIMIT
from cairn.worker.retention import Purger
from cairn.worker.stats import WorkerStats
from cairn.worker.wakes import Pools, Wakes, loop_failed

log = logging.getLogger("cairn.worker")

QUEUE_DEPTH_CAP = 100_000      # cairn.queue.depth counts at most this many ready tasks per queue and kind
TIMER_BATCH = 100              # timers fired per statement (a full batch fires again at once)
HEARTBEAT_SECONDS = 10.0       # how often a worker writes its row in cairn.workers (Worker(heartbeat_interval=))
LIVENESS_PERIODS = 3           # a worker is live while its last heartbeat is younger than this many periods
WORKER_RETENTION_SECONDS = 86_400.0  # rows of workers stopped or stale for longer are removed
FORGET_EVERY = 60              # heartbeats between two removals of such rows (10 min at the default cadence)
BATCH_CHECK_SECONDS = 5.0      # how often a worker looks for a running batch that nobody executes
# How often a pass places the due bookings of keyed or prioritised work (place_due_retries:
# activity retries, a run's failed or delayed workflow task): a booked task is claimable at
# its ready time anyway, placing only moves it forward, so a busy worker's passes (every
# 50 ms under a backlog) need not each spend a round trip on it.
PLACE_RETRIES_SECONDS = 0.5
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
        self._retries_placed = float("-inf")  # loop time of the last place_due_retries
        self._purger = Purger()  # closed runs past their namespace's retention, in a task of its own

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
            await self._purger.stop()

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
                self._purger.tick(self._pools.main())
                await self.place_due_retries()
                found = await store.next_due(self._pools.main(), self._next_due_params)
                wakes.low_lanes = found.low_lanes  # a new lane's work is due: woken below
                due = found.wait
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

    async def place_due_retries(self) -> None:
        """Every :data:`PLACE_RETRIES_SECONDS`, places the due retries of keyed or
        prioritised activities, and the failed or delayed workflow tasks of keyed or
        prioritised runs, in the claim order (migrations 0025, 0027)."""
        now = asyncio.get_running_loop().time()
        if now - self._retries_placed < PLACE_RETRIES_SECONDS:
            return
        self._retries_placed = now
        while await store.place_due_retries(self._pools.main(), limit=REAP_LIMIT) >= REAP_LIMIT:
            pass

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
                            wakes.workflow_notified()
                        else:
                            wakes.activity.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listen connection lost (%s); polling until it is back", exc)
                await asyncio.sleep(1.0)


class Heartbeat:
    """The worker's row in ``cairn.workers``: registered as the worker starts, rewritten
    every ``interval`` seconds with its slots in use and counters, marked stopped after a
    graceful drain. A killed worker's row goes stale by itself: its ``live_until`` is the
    last heartbeat plus :data:`LIVENESS_PERIODS` periods.

    Its own task and its own session (:class:`~cairn.store.workers.HeartbeatSession`), not
    the maintenance pass and not the engine's pool: a pass can take long under a backlog
    (timers fire in batches until none is due), and a heartbeat must neither wait for it
    nor for a pooled connection, nor make a claim wait. One statement per heartbeat.
    """

    def __init__(self, *, url: str, registration: Registration, load: Callable[[], Load], interval: float,
                 retention_seconds: float = WORKER_RETENTION_SECONDS) -> None:
        self._session = HeartbeatSession(url)
        self._reg = registration
        self._load = load
        self._interval = interval
        self._retention = retention_seconds
        self._started_at: datetime | None = None
        self._done = asyncio.Event()
        self._lock = asyncio.Lock()  # one statement at a time; none after the stop
        self.beats = 0

    @property
    def live_seconds(self) -> float:
        return self._interval * LIVENESS_PERIODS

    async def register(self) -> None:
        """The first heartbeat, before the worker claims anything (a failure stops the start,
        as the type registration's does); it also removes long-gone workers' rows."""
        idle = Load(0, 0, 0, 0, 0)
        async with self._lock:
            self._started_at = await self._session.beat(self._reg, idle, started_at=None,
                                                        live_seconds=self.live_seconds)
            await self._session.forget(retention_seconds=self._retention)
        self.beats = 1

    async def run(self) -> None:
        """Heartbeats every interval until :meth:`stop`; a failed one is logged and the next
        one tries again (on a fresh session)."""
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), self._interval)
            if self._done.is_set():
                return
            try:
                await self.beat()
            except Exception as exc:
                loop_failed("worker heartbeat", exc)

    async def beat(self) -> None:
        """One heartbeat now (and, every :data:`FORGET_EVERY`, the removal of old rows)."""
        async with self._lock:
            if self._done.is_set():
                return
            self._started_at = await self._session.beat(self._reg, self._load(), started_at=self._started_at,
                                                        live_seconds=self.live_seconds)
            self.beats += 1
            if self.beats % FORGET_EVERY == 0:
                await self._session.forget(retention_seconds=self._retention)

    async def stop(self) -> None:
        """Marks the row stopped (after the drain) and closes the session; no heartbeat after."""
        self._done.set()
        async with self._lock:
            try:
                if self._started_at is not None:
                    await self._session.stopped(self._reg, self._load(), started_at=self._started_at)
            except Exception as exc:  # the row then goes stale by itself
                log.warning("could not mark worker %s stopped (%s); its row goes stale instead",
                            self._reg.identity, exc)
            finally:
                await self._session.close()
