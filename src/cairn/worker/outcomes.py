"""The worker's fast path: activity outcomes and the workflow tasks they trigger, recorded
in one transaction with the eager lease of the next activities.

Outcomes queue up in the :class:`Outbox` while a group is being written and go in the next
one (group commit). A group takes one of two ways (ARCHITECTURE.md, "The life of an activity result"):

- **speculated**, one round trip: when the worker caches every run of the group, it runs
  the workflow tasks first, from the cached instances, then sends the outcomes and the
  record together (``complete_activities_speculated``; ``record_workflow_tasks``). The
  database checks that each run is as the cache had it; if one is not (an event arrived, or
  another worker ran it), nothing is written, the instances are evicted, and the group
  takes the locked way.
- **locked**, two round trips: record the outcomes, lock the runs' tasks and read their
  state (``complete_activities_and_lock``), run the tasks, record them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from cairn import payloads
from cairn.engine import history as h
from cairn.engine.history import Event, check_history_length
from cairn.errors import DatabaseError, SpeculationMissed
from cairn.store import clock
from cairn.store import tasks as store
from cairn.store.activities import Attempt
from cairn.store.tasks import TaskState
from cairn.store.transactions import connection, transaction
from cairn.worker.cache import Cache
from cairn.worker.slots import Slots
from cairn.worker.stats import WorkerStats
from cairn.worker.tasks import Activation, Batch, TaskRunner
from cairn.worker.wakes import Pools, Wakes

log = logging.getLogger("cairn.worker")

OUTCOME_BATCH = 32          # fast-path activity outcomes committed together


class Outbox:
    """Activity outcomes waiting for the deliverer, each with the future its attempt awaits:
    True (recorded), False (superseded) or None (the group rolled back: record it the plain
    way)."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], asyncio.Future[bool | None]]] = []
        self.ready = asyncio.Event()

    async def deliver(self, outcome: dict[str, Any]) -> bool | None:
        """Queues an outcome (run_id, seq, token, type, data) for the next group and waits
        for its fate."""
        done: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self.items.append((outcome, done))
        self.ready.set()
        return await done


class OutcomeDeliverer:
    """Commits activity outcomes with the workflow tasks they trigger (see the module docstring)."""

    def __init__(self, *, pools: Pools, outbox: Outbox, tasks: TaskRunner, cache: Cache, stats: WorkerStats,
                 slots: Slots, wakes: Wakes, identity: str, spawn: Callable[[list[Attempt]], None]) -> None:
        self._pools = pools
        self._outbox = outbox
        self._tasks = tasks
        self._cache = cache
        self._stats = stats
        self._slots = slots
        self._wakes = wakes
        self._identity = identity
        self._spawn = spawn  # starts attempts leased eagerly (the activity runner's)

    async def run(self) -> None:
        """Commits the outbox in groups: whatever queued up while the previous group was
        being written goes into the next one (group commit)."""
        outbox = self._outbox
        while True:
            await outbox.ready.wait()
            outbox.ready.clear()
            while outbox.items:
                group, outbox.items = outbox.items[:OUTCOME_BATCH], outbox.items[OUTCOME_BATCH:]
                try:
                    results = await self.deliver_group([outcome for outcome, _ in group])
                except Exception as exc:
                    log.debug("fast path fell back for %d outcome(s): %r", len(group), exc)
                    results = [None] * len(group)
                for (_, done), result in zip(group, results, strict=True):
                    if not done.done():
                        done.set_result(result)

    async def deliver_group(self, outcomes: list[dict[str, Any]]) -> list[bool | None]:
        """One transaction: the outcomes, the workflow tasks they trigger, eager leases.

        Returns, per outcome, True (recorded), False (superseded: its attempt was fenced off)
        or None (the group rolled back: record it the plain way).
        """
        # Lock task rows in run-id order, the same in every worker: no deadlock between groups.
        ordered = sorted(outcomes, key=lambda o: (o["run_id"], o["seq"]))
        self._slots.finishing = len(outcomes)
        try:
            if all(o["run_id"] in self._cache for o in ordered):
                speculated = await self._deliver_speculated(ordered)
                if speculated is not False:
                    return [speculated] * len(outcomes)
            return await self._deliver_locked(ordered, outcomes)
        finally:
            self._slots.finishing = 0

    async def _deliver_speculated(self, ordered: list[dict[str, Any]]) -> bool | None:
        """The group in one round trip, its tasks run ahead from the cache. True: recorded;
        False: a run was not as cached (nothing written: take the locked way); None: the
        transaction failed (record the outcomes the plain way)."""
        now = time.time() + self._tasks.clock_offset  # the database's clock, as last seen
        if clock.active():  # a time-skipping test: its virtual clock may have jumped since
            async with connection(self._pools.main()) as conn:
                now = clock.timestamp(conn, now)
        activations = self._speculate(ordered, now)
        if activations is None:
            return False
        tasks = [p.task for p in activations]
        batch: Batch | None = None
        check = store.speculation_check(ordered, [(t.run_id, t.last_seq) for t in tasks])
        async with connection(self._pools.main()) as conn:
            try:
                async with transaction(conn):
                    batch = await self._tasks.record_batch(conn, activations, ahead=check)
                batch.committed()
            except DatabaseError as exc:
                self._tasks.abandon(tasks, batch)  # evicts the runs: their instances ran ahead
                if isinstance(exc, SpeculationMissed):
                    self._stats.speculation_missed += 1
                    return False
                return None
            except BaseException:
                self._tasks.abandon(tasks, batch)
                raise
        self._stats.fast_path += len(ordered)
        self._stats.speculated += len(activations)
        self._committed(batch)
        return True

    def _speculate(self, ordered: list[dict[str, Any]], now: float) -> list[Activation] | None:
        """Runs the workflow task each run of the group would get — a marker, then the
        group's outcomes for it as input events, as a claim would deliver them from the
        inbox — on its cached instance. None (and the runs evicted) if one cannot run."""
        if payloads.made() and any(payloads.find_refs(o["data"]) for o in ordered):
            return None  # a stored payload: the locked way stores it and resolves it (cache kept)
        by_run: dict[str, list[dict[str, Any]]] = {}
        for o in ordered:
            by_run.setdefault(o["run_id"], []).append(o)
        activations: list[Activation] = []
        for run_id, outcomes in by_run.items():
            inst = self._cache.get(run_id)
            began, began_ns = time.monotonic(), time.time_ns()
            try:
                if inst is None or inst.closed:
                    raise LookupError(run_id)
                last_seq = inst.last_seq
                # Workflow time never goes back, whatever this host's clock does.
                marker = Event(last_seq + 1, h.WORKFLOW_TASK_STARTED,
                               {"time": max(now, inst.now_ts), "worker": self._identity})
                # Data as a replay will read it back from jsonb (key order, numbers).
                inputs = [Event(last_seq + 2 + i, o["type"], h.as_stored(o["data"])) for i, o in enumerate(outcomes)]
                commands = inst.activate(marker, inputs)
                if inst.local_requests():  # local activities run in the locked way (cairn.worker.local)
                    raise LookupError(run_id)
                events = [marker, *inputs, *(c.as_event() for c in commands)]
                if check_history_length(events, inst.info.workflow_id, run_id) is not None:
                    raise LookupError(run_id)  # the locked way fails the task with the advice
            except Exception as exc:  # the locked way replays the run and deals with it
                log.debug("fast path: run %s not speculated (%r)", run_id, exc)
                for p in activations:
                    self._cache.evict(p.task.run_id)
                self._cache.evict(run_id)
                return None
            self._cache.touch(run_id)
            self._stats.cache_hits += 1
            task = TaskState(run_id, inst.info.workflow_id, inst.info.workflow_type, inst.info.queue, "running",
                             last_seq)
            activations.append(Activation.of(task, inst, events, [], began, began_ns))
        return activations

    async def _deliver_locked(self, ordered: list[dict[str, Any]],
                              outcomes: list[dict[str, Any]]) -> list[bool | None]:
        """The group in two round trips: record the outcomes, lock and read the runs, run
        and record their tasks."""
        tasks: list[TaskState] = []
        batch: Batch | None = None
        async with connection(self._pools.main()) as conn:
            try:
                async with transaction(conn):
                    # One round trip: begin, record, lock, then read the state in a new snapshot.
                    tasks = await store.complete_and_lock(
                        conn, outcomes=ordered,
                        replay=sorted({o["run_id"] for o in ordered if o["run_id"] not in self._cache}))
                    recorded = {(t.run_id, seq) for t in tasks for seq in t.recorded}
                    # A task whose code is failing runs when its backoff ends; a paused run's
                    # task when it is resumed (its outcome waits in the inbox).
                    batch = await self._tasks.run_tasks(conn, [
                        t for t in tasks if not t.paused and not (
                            t.failures and t.available_at is not None and t.now is not None
                            and t.available_at > t.now)])
                batch.committed()
            except DatabaseError:
                self._tasks.abandon(tasks, batch)
                return [None] * len(outcomes)
            except BaseException:
                self._tasks.abandon(tasks, batch)
                raise
        self._stats.fast_path += len(recorded)
        self._committed(batch)
        return [(o["run_id"], o["seq"]) in recorded for o in outcomes]

    def _committed(self, batch: Batch) -> None:
        """After a group's commit: start its eager attempts; claim again for a kept task
        (see TaskRunner.claim_and_run)."""
        self._spawn(batch.eager)
        self._tasks.tasks_recorded()
        if batch.kept:
            self._wakes.workflow_poller()
