"""The worker's fast path (a mixin of :class:`cairn.worker.Worker`): activity outcomes and
the workflow tasks they trigger, recorded in one transaction with the eager lease of the
next activities.

Outcomes queue up while a group is being written and go in the next one (group commit).
A group takes one of two ways (ARCHITECTURE.md, "The fast path"):

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
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cairn.engine import history as h
from cairn.engine.history import Event, check_history_length
from cairn.engine.instance import WorkflowInstance
from cairn.store import transactions as _transactions
from cairn.worker.tasks import Prepared, count_runs

if TYPE_CHECKING:
    from cairn.worker import WorkerStats

log = logging.getLogger("cairn.worker")

OUTCOME_BATCH = 32          # fast-path activity outcomes committed together
SPECULATION_MISSED = "CR001"  # complete_activities_speculated: a run is not as the cache had it


class _FastPath:
    """Commits activity outcomes with the workflow tasks they trigger (see the module docstring)."""

    _pool: AsyncConnectionPool | None
    _cache: OrderedDict[str, WorkflowInstance]
    _outbox: list[tuple[dict[str, Any], asyncio.Future[bool | None]]]
    _outbox_ready: asyncio.Event
    _finishing: int
    _clock_offset: float
    identity: str
    stats: WorkerStats

    if TYPE_CHECKING:  # defined by Worker and _ActivityRunning
        async def _workflow_tasks(self, conn: psycopg.AsyncConnection[Any],
                                  tasks: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

        async def _record_batch(self, conn: psycopg.AsyncConnection[Any], batch: list[Prepared],
                                ahead: tuple[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]: ...

        def _abandon(self, tasks: list[dict[str, Any]], eager: list[dict[str, Any]]) -> None: ...

        def _evict(self, run_id: str) -> None: ...

        def _spawn(self, rows: list[dict[str, Any]], *, reserved: bool = True) -> None: ...

        def _wake_workflow_poller(self) -> None: ...

    async def _deliverer(self) -> None:
        """Commits the fast path's outcomes in groups: whatever queued up while the previous
        group was being written goes into the next one (group commit)."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                group, self._outbox = self._outbox[:OUTCOME_BATCH], self._outbox[OUTCOME_BATCH:]
                try:
                    results = await self._deliver_group([outcome for outcome, _ in group])
                except Exception as exc:
                    log.debug("fast path fell back for %d outcome(s): %r", len(group), exc)
                    results = [None] * len(group)
                for (_, done), result in zip(group, results, strict=True):
                    if not done.done():
                        done.set_result(result)

    async def _deliver_group(self, outcomes: list[dict[str, Any]]) -> list[bool | None]:
        """One transaction: the outcomes, the workflow tasks they trigger, eager leases.

        Returns, per outcome, True (recorded), False (superseded: its attempt was fenced off)
        or None (the group rolled back: record it the plain way).
        """
        # Lock task rows in run-id order, the same in every worker: no deadlock between groups.
        ordered = sorted(outcomes, key=lambda o: (o["run_id"], o["seq"]))
        self._finishing = len(outcomes)
        try:
            if all(o["run_id"] in self._cache for o in ordered):
                speculated = await self._deliver_speculated(ordered)
                if speculated is not False:
                    return [speculated] * len(outcomes)
            return await self._deliver_locked(ordered, outcomes)
        finally:
            self._finishing = 0

    async def _deliver_speculated(self, ordered: list[dict[str, Any]]) -> bool | None:
        """The group in one round trip, its tasks run ahead from the cache. True: recorded;
        False: a run was not as cached (nothing written: take the locked way); None: the
        transaction failed (record the outcomes the plain way)."""
        assert self._pool is not None
        prepared = self._speculate(ordered)
        if prepared is None:
            return False
        tasks = [p.task for p in prepared]
        eager: list[dict[str, Any]] = []
        check = ("complete_activities_speculated", {
            "outcomes": Jsonb([{"run_id": o["run_id"], "seq": o["seq"], "token": o["token"]} for o in ordered]),
            "expected": Jsonb([{"run_id": t["run_id"], "last_seq": t["last_seq"]} for t in tasks])})
        async with self._pool.connection() as conn:
            try:
                async with _transactions.transaction(conn):
                    eager = await self._record_batch(conn, prepared, ahead=check)
                count_runs(tasks)  # committed
            except psycopg.Error as exc:
                self._abandon(tasks, eager)  # evicts the runs: their instances ran ahead
                if exc.sqlstate == SPECULATION_MISSED:
                    self.stats.speculation_missed += 1
                    return False
                return None
            except BaseException:
                self._abandon(tasks, eager)
                raise
        self.stats.fast_path += len(ordered)
        self.stats.speculated += len(prepared)
        self._committed(tasks, eager)
        return True

    def _speculate(self, ordered: list[dict[str, Any]]) -> list[Prepared] | None:
        """Runs the workflow task each run of the group would get — a marker, then the
        group's outcomes for it as input events, as a claim would deliver them from the
        inbox — on its cached instance. None (and the runs evicted) if one cannot run."""
        by_run: dict[str, list[dict[str, Any]]] = {}
        for o in ordered:
            by_run.setdefault(o["run_id"], []).append(o)
        now = time.time() + self._clock_offset  # the database's clock, as last seen
        prepared: list[Prepared] = []
        for run_id, outcomes in by_run.items():
            inst = self._cache.get(run_id)
            began, began_ns = time.monotonic(), time.time_ns()
            try:
                if inst is None or inst.closed:
                    raise LookupError(run_id)
                last_seq = inst.last_seq
                # Workflow time never goes back, whatever this host's clock does.
                marker = Event(last_seq + 1, h.WORKFLOW_TASK_STARTED,
                               {"time": max(now, inst.now_ts), "worker": self.identity})
                # Data as a replay will read it back from jsonb (key order, numbers).
                inputs = [Event(last_seq + 2 + i, o["type"], h.as_stored(o["data"])) for i, o in enumerate(outcomes)]
                commands = inst.activate(marker, inputs)
                events = [marker, *inputs, *(c.as_event() for c in commands)]
                if check_history_length(events, inst.info.workflow_id, run_id) is not None:
                    raise LookupError(run_id)  # the locked way fails the task with the advice
            except Exception as exc:  # the locked way replays the run and deals with it
                log.debug("fast path: run %s not speculated (%r)", run_id, exc)
                for p in prepared:
                    self._evict(str(p.task["run_id"]))
                self._evict(run_id)
                return None
            self._cache.move_to_end(run_id)
            self.stats.cache_hits += 1
            task = {"run_id": run_id, "workflow_id": inst.info.workflow_id, "workflow_type": inst.info.workflow_type,
                    "queue": inst.info.queue, "last_seq": last_seq, "status": "running", "started": None}
            prepared.append(Prepared.of(task, inst, events, [], began, began_ns))
        return prepared

    async def _deliver_locked(self, ordered: list[dict[str, Any]],
                              outcomes: list[dict[str, Any]]) -> list[bool | None]:
        """The group in two round trips: record the outcomes, lock and read the runs, run
        and record their tasks."""
        assert self._pool is not None
        tasks: list[dict[str, Any]] = []
        eager: list[dict[str, Any]] = []
        async with self._pool.connection() as conn:
            try:
                async with _transactions.transaction(conn):
                    # One round trip: begin, record, lock, then read the state in a new snapshot.
                    tasks = await _transactions.execute(conn, "complete_activities_and_lock", {
                        "outcomes": Jsonb(ordered), "now": None,
                        "replay": sorted({o["run_id"] for o in ordered if o["run_id"] not in self._cache})},
                        begin=True)
                    recorded = {(str(t["run_id"]), seq) for t in tasks for seq in t.pop("recorded")}
                    # A task whose code is failing runs when its backoff ends.
                    eager = await self._workflow_tasks(conn, [
                        t for t in tasks if not (t["failures"] and t["available_at"] > t["now"])])
                count_runs(tasks)  # committed
            except psycopg.Error:
                self._abandon(tasks, eager)
                return [None] * len(outcomes)
            except BaseException:
                self._abandon(tasks, eager)
                raise
        self.stats.fast_path += len(recorded)
        self._committed(tasks, eager)
        return [(o["run_id"], o["seq"]) in recorded for o in outcomes]

    def _committed(self, tasks: list[dict[str, Any]], eager: list[dict[str, Any]]) -> None:
        """After a group's commit: start its eager attempts; claim again for a kept task
        (see Worker._claim_and_run)."""
        self._spawn(eager)
        if any(t.get("_kept") for t in tasks):
            self._wake_workflow_poller()
