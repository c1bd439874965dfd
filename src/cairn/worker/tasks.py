"""The worker's workflow tasks: claim a batch, run each task's code (from the sticky cache,
or replayed), record them all in one statement, in one transaction (ARCHITECTURE.md, "The
life of a workflow task"). The fast path (``cairn.worker.outcomes``) records its
tasks through :meth:`TaskRunner.record_batch` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

from cairn import telemetry as _telemetry
from cairn.activity import ActivityDefinition
from cairn.engine import history as h
from cairn.engine.history import Event, check_history_length
from cairn.engine.instance import WorkflowInstance, failure_of, replay
from cairn.engine.local import LOCAL_BUDGET_SECONDS
from cairn.engine.signals import admit_updates
from cairn.errors import Deadlock, Refused, UnknownWorkflowType, WorkflowTaskFailed
from cairn.store import lifecycle as _lifecycle
from cairn.store import payloads as stored
from cairn.store import tasks as store
from cairn.store.activities import Attempt
from cairn.store.payloads import Link
from cairn.store.tasks import Statement, TaskState
from cairn.store.transactions import connection, transaction
from cairn.telemetry import tracer
from cairn.worker.cache import Cache
from cairn.worker.claims import ClaimPairs
from cairn.worker.local import LocalRunner
from cairn.worker.slots import Slots
from cairn.worker.stats import WorkerStats
from cairn.worker.wakes import Pools, Wakes, loop_failed
from cairn.workflow import WorkflowDefinition, WorkflowInfo

if TYPE_CHECKING:
    from cairn.store.db import Conn

log = logging.getLogger("cairn.worker")

CLAIM_BATCH = 8                 # workflow tasks claimed and committed together
TASK_RETRY_MAX_SECONDS = 60.0   # cap of the backoff of a failing workflow task

Counted = tuple[bool, str, str | None]  # a recorded task: started its run, workflow type, closed status


@dataclass
class Activation:
    """A workflow task whose code has run, waiting to be recorded with its batch."""

    task: TaskState
    inst: WorkflowInstance
    events: list[Event]
    inbox_ids: list[int]
    family: bool  # the run closes and has a parent or children (see cairn.store.lifecycle)
    began: float
    began_ns: int
    close_status: str | None  # the status the events close the run with, if they do
    wait_cancels: list[int]  # activities cancelled with wait_cancellation_completed
    extras: list[Statement]  # named statements after record_workflow_tasks
    plain: bool  # record_workflow_tasks records it all (no extras, no lifecycle statements)
    span: Span | None = None

    @classmethod
    def of(cls, task: TaskState, inst: WorkflowInstance, events: list[Event], inbox_ids: list[int],
           began: float, began_ns: int, rejected: list[dict[str, Any]] | None = None) -> Activation:
        family = inst.closed and (inst.info.parent_run_id is not None or inst.children_started > 0)
        wait_cancels = [ev.data["activity_seq"] for ev in events if ev.type == h.ACTIVITY_CANCEL_REQUESTED
                        and ev.data.get("cancellation_type") == "wait_cancellation_completed"]
        close_status = next((h.TERMINAL_EVENTS[e.type] for e in events if e.type in h.TERMINAL_EVENTS), None)
        extras = store.extra_statements(task, events, close_status, wait_cancels, rejected)
        plain = not extras and not _lifecycle.has_commands(events, family)
        return cls(task, inst, events, inbox_ids, family, began, began_ns, close_status, wait_cancels, extras,
                   plain)


@dataclass
class Batch:
    """What a transaction's workflow tasks left to do once it commits."""

    eager: list[Attempt] = field(default_factory=list)  # leased to this worker: start them
    kept: bool = False  # a task was kept (an event it did not see): claim again
    counted: list[Counted] = field(default_factory=list)  # the runs they started and closed
    saved: list[Link] = field(default_factory=list)  # stored payloads it linked to its runs

    def committed(self) -> None:
        """After the commit: counts runs started and closed by the tasks (never by rolled-back
        ones), and remembers the stored payloads linked (not sent again for those runs)."""
        stored.remember(self.saved)
        for started, workflow_type, closed in self.counted:
            if started:
                _telemetry.workflows_started.add(1, {"workflow_type": workflow_type})
            if closed:
                _telemetry.workflows_closed.add(1, {"workflow_type": workflow_type, "status": closed})


class TaskRunner:
    """Claims, runs and records workflow tasks (see the module docstring)."""

    def __init__(self, *, pools: Pools, cache: Cache, stats: WorkerStats, slots: Slots, wakes: Wakes,
                 workflows: dict[str, WorkflowDefinition], activities: dict[str, ActivityDefinition], queues: list[str],
                 namespace: str, identity: str, lease_seconds: float,
                 spawn: Callable[[list[Attempt]], None], tasks_recorded: Callable[[], None]) -> None:
        self._pools = pools
        self._cache = cache
        self._stats = stats
        self._slots = slots
        self._wakes = wakes
        self._workflows = workflows
        self._activity_types = frozenset(activities)
        self._locals = LocalRunner(activities, identity, pools)
        self._queues = queues
        self._namespace = namespace
        self._identity = identity
        self._lease_seconds = lease_seconds
        self._spawn = spawn  # starts attempts leased eagerly (the activity runner's)
        self.tasks_recorded = tasks_recorded  # after each commit: a waiting query may now be answered
        self._pairs = ClaimPairs(queues, workflows)  # what the claims take
        self._solo_claims = 0  # claims to make one task at a time (a batch failed)
        self.clock_offset = 0.0  # the database's clock minus this host's, as of the last task read

    async def poller(self, index: int) -> None:
        """One workflow poller: claims and runs batches until the worker stops."""
        wakes = self._wakes
        wake = wakes.workflow[index]
        while not wakes.stopping.is_set():
            wake.clear()
            try:
                more = await self.claim_and_run()
            except Exception as exc:
                loop_failed("workflow task loop", exc)
                more = False
                await asyncio.sleep(wakes.poll_interval)
            if more:
                wakes.workflow_poller()  # maybe more are ready: let a sibling look too
                continue
            if wakes.take_pending():
                continue
            await wakes.park(index)

    async def lane(self) -> None:
        """The latency lane: claims and runs a task per NOTIFY that found every poller busy.

        Under a backlog each poller is busy running its batch (up to :data:`CLAIM_BATCH`
        tasks: their code, then one record statement and its commit), so a task that
        becomes ready then waits for the next claim of whichever poller finishes first. With
        fairness keys a new key's task is at the head of the claim order (stride scheduling,
        migration 0023), but the order only counts at the next claim: a tenant starting
        a few runs beside another's 10,000 queued ones waited a poller's cycle, 2.6-3.2x
        its wait on an idle worker (bench/README.md, "Fairness"). This lane is parked while
        the pollers keep up; woken, it claims at once the head of the order: as many tasks
        as NOTIFYs arrived since it last claimed (up to a batch; one arrives per task made
        ready: a tenant starting 10 runs at once was served one per lane cycle, the rest
        by the pollers' next batches), so its claim and commit are short and it is soon
        free for the next. It does not loop on a backlog: that is the pollers' work.
        """
        wakes = self._wakes
        while True:
            await wakes.lane.wait()
            if wakes.stopping.is_set():
                return
            wakes.lane.clear()
            wanted = wakes.take_lane()
            if not wanted:
                continue
            try:
                await self.claim_and_run(limit=min(wanted, CLAIM_BATCH))
            except Exception as exc:
                loop_failed("workflow task lane", exc)
                await asyncio.sleep(wakes.poll_interval)

    async def claim_and_run(self, limit: int = CLAIM_BATCH) -> bool | None:
        """``Worker.run_workflow_task``; claims up to ``limit`` tasks (one at a time after a
        failed batch); returns False if no task was ready, True if more may be
        ready (a full batch, a task kept for an event it did not see, a failed batch), and
        None if the claim took every ready task it could see.

        A short batch means the claim saw no more ready tasks: claiming again at once would
        come back empty (two wasted round trips per task on an idle worker). Tasks that
        become ready later send a NOTIFY; a task that this batch kept (record_workflow_tasks
        found an event newer than the claim's snapshot) is claimed again right away.
        """
        tasks: list[TaskState] = []
        batch: Batch | None = None
        limit = 1 if self._solo_claims else limit
        async with connection(self._pools.main()) as conn:
            try:
                async with transaction(conn):
                    tasks = await store.claim(conn, namespace=self._namespace, pairs=self._pairs.next(limit),
                                              low_lane="workflow" in self._wakes.low_lanes)
                    if not tasks:
                        return False
                    batch = await self.run_tasks(conn, tasks)
                batch.committed()
                self.tasks_recorded()
            except Refused as exc:
                self.abandon(tasks, batch)
                if len(tasks) > 1:
                    self._solo_claims += len(tasks)  # find the culprit one task at a time
                elif exc.race:
                    # Someone appended to this run since our cached view: replay next time.
                    log.info("workflow task of run %s lost a race (%s); it runs again", tasks[0].run_id,
                             exc.__cause__ or exc)
                elif tasks:
                    # The database refused what the code produced: back the task off and say
                    # why (its own error), instead of retrying it in a tight loop.
                    await self._fail_task(conn, tasks[0], exc.__cause__ or exc)
                else:
                    raise
                return True
            except Deadlock as exc:
                # A parent and a child closing at once wait for each other's task rows
                # (lifecycle.close_family); Postgres aborted this side: it runs again.
                self.abandon(tasks, batch)
                log.info("workflow task batch lost a deadlock (%s); it runs again", exc)
                return True
            except BaseException:
                self.abandon(tasks, batch)
                raise
            finally:
                if limit == 1 and self._solo_claims:
                    self._solo_claims -= 1
        self._spawn(batch.eager)
        return True if len(tasks) >= limit or batch.kept else None

    async def _fail_task(self, conn: Conn, task: TaskState, exc: BaseException) -> None:
        """Records a failed workflow task (history untouched) and backs it off."""
        error = failure_of(exc.cause if isinstance(exc, WorkflowTaskFailed) else exc)
        delay = min(2.0 ** task.failures, TASK_RETRY_MAX_SECONDS)
        self._stats.workflow_task_failures += 1
        log.warning("workflow task of %s (run %s) failed, retrying in %.0f s: %s", task.workflow_id, task.run_id,
                    delay, exc, extra={"workflow_id": task.workflow_id, "run_id": task.run_id})
        await store.fail(conn, task.run_id, error=error, delay=delay)

    def abandon(self, tasks: list[TaskState], batch: Batch | None) -> None:
        """A workflow task's transaction failed: forget its runs' cached state and reservations."""
        for task in tasks:
            self._cache.evict(task.run_id)
        if batch is not None:
            self._slots.unreserve(len(batch.eager))

    async def run_tasks(self, conn: Conn, tasks: list[TaskState]) -> Batch:
        """Runs claimed (locked) workflow tasks inside the caller's transaction: each task's
        code, then one statement recording them all (:meth:`record_batch`).

        Returns the activity attempts they leased to this worker (eager dispatch), to be
        started once the transaction has committed, with what else follows the commit.
        """
        activations = []
        closed: list[Counted] = []
        # The batch's time for local activities: its claim is held meanwhile.
        deadline = time.monotonic() + LOCAL_BUDGET_SECONDS
        for task in tasks:
            p = await self._activate(conn, task, closed, deadline)
            if p is not None:
                activations.append(p)
        batch = await self.record_batch(conn, activations)
        batch.counted += closed
        return batch

    async def _activate(self, conn: Conn, task: TaskState, closed: list[Counted], deadline: float) -> Activation | None:
        """Runs one task's workflow code (from the cache, or replayed) and its local
        activities (until ``deadline``, see ``cairn.worker.local``); None if nothing is
        left to record for it (the run is closed, the task failed, or it closed without
        code: then counted in ``closed``)."""
        run_id = task.run_id
        if task.status != "running":
            await store.finish(conn, run_id)
            return None
        inbox = task.inbox  # read with the task state
        last_seq = task.last_seq
        closing = _lifecycle.closing_input(list(inbox))
        if closing is not None:  # terminated by its parent's close, or timed out: no code runs
            await self._close_without_code(conn, task, [r[0] for r in inbox], closing, closed)
            return None
        now = task.now
        assert now is not None
        self.clock_offset = now.timestamp() - time.time()
        began, began_ns = time.monotonic(), time.time_ns()  # the span starts here, once its parent is known
        inst: WorkflowInstance | None = None
        try:
            inst = self._cache.get(run_id)
            if inst is not None and inst.last_seq == last_seq:
                self._cache.touch(run_id)
                self._stats.cache_hits += 1
            else:
                self._cache.evict(run_id)
                self._stats.cache_misses += 1
                inst = await self._rebuild(conn, task)
            # Update requests: validated now; only accepted ones become input events. The
            # code sees stored payloads resolved; history records their references.
            shown = task.shown_inbox if task.shown_inbox is not None else inbox
            admitted = admit_updates(inst, shown)
            if admitted.rejected and not admitted.inbox:
                # Rejected updates alone: the code is not woken and history gets no event,
                # not even a task marker (a rejected update leaves none, as in Temporal).
                return Activation.of(task, inst, [], admitted.consumed, began, began_ns, admitted.rejected)
            marker = Event(last_seq + 1, h.WORKFLOW_TASK_STARTED,
                           {"time": now.timestamp(), "worker": self._identity})
            inputs = [Event(last_seq + 2 + i, r[1], r[2]) for i, r in enumerate(admitted.inbox)]
            commands = inst.activate(marker, inputs)
            if shown is not inbox:
                stored_data = {r[0]: r[2] for r in inbox}
                inputs = [Event(e.seq, e.type, stored_data[r[0]]) for e, r in zip(inputs, admitted.inbox, strict=True)]
            while inst.local_requests():  # local activities: run here, recorded with the task
                outcomes = await self._locals.run(inst, now=now.timestamp(), began=began, deadline=deadline)
                commands = [*commands, *inst.resolve_local_activities(outcomes)]
        except (WorkflowTaskFailed, UnknownWorkflowType) as exc:
            self._cache.evict(run_id)
            span = task_span(task, inst.trace if inst is not None else task.started, began_ns)
            span.set_attribute("cairn.task_failed", True)
            span.set_status(StatusCode.ERROR, str(exc))
            span.end()
            _telemetry.workflow_task_duration.record(time.monotonic() - began, {
                "workflow_type": task.workflow_type, "outcome": "failed"})
            await self._fail_task(conn, task, exc)
            return None
        events = [marker, *inputs, *(c.as_event() for c in commands)]
        too_long = check_history_length(events, task.workflow_id, run_id)
        if too_long is not None:  # fail the task (history untouched) with continue-as-new advice
            self._cache.evict(run_id)
            await self._fail_task(conn, task, too_long)
            return None
        return Activation.of(task, inst, events, admitted.consumed, began, began_ns, admitted.rejected)

    async def _rebuild(self, conn: Conn, task: TaskState) -> WorkflowInstance:
        """Cache miss: replay the whole history into a new instance."""
        definition = self._workflows.get(task.workflow_type)
        if definition is None:
            raise UnknownWorkflowType(f"this worker has no workflow type {task.workflow_type!r}")
        if task.started is not None:  # a new run: its history is WorkflowStarted alone
            events = [Event(1, h.WORKFLOW_STARTED, task.started)]
        elif task.history is not None:  # read with the task state (the fast path)
            events = [Event(s, t, d) for s, t, d in task.history]
        else:
            events = await store.read_history(conn, task.run_id)
        assert task.created_at is not None
        info = WorkflowInfo(
            workflow_id=task.workflow_id, run_id=task.run_id, workflow_type=task.workflow_type,
            queue=task.queue, namespace=self._namespace, start_time=task.created_at,
        )
        try:
            return replay(definition, info, events)
        except WorkflowTaskFailed:
            raise
        except Exception as exc:  # NonDeterminismError and friends
            raise WorkflowTaskFailed(exc) from exc

    async def record_batch(self, conn: Conn, batch: list[Activation], ahead: Statement | None = None) -> Batch:
        """Writes the outcomes of activated workflow tasks, in their transaction: one
        ``record_workflow_tasks`` statement for the batch, then what few tasks need besides
        (timers, cancels, search attributes, child runs: a statement each, when present).

        Activities this worker can run, up to its free slots, are leased to it in the same
        statement (eager dispatch); they are returned. The record carries the COMMIT when
        no task needs a statement after it. ``ahead`` is a statement sent before the record
        in the same query, opening the transaction with it (the speculated fast path's
        check, see ``cairn.worker.outcomes``).
        """
        out = Batch()
        if not batch:
            return out
        # Attempts whose outcomes this transaction records (the fast path's group) give back
        # their slots when it commits: Slots.free_for_eager counts them as free.
        free = 0 if self._wakes.stopping.is_set() else self._slots.free_for_eager()
        tracing = _telemetry.tracing()
        entries: list[dict[str, Any]] = []
        inbox_ids: list[int] = []
        for p in batch:
            if tracing:  # current while recording: activities and child runs carry its context
                p.span = task_span(p.task, p.inst.trace, p.began_ns)
                with trace.use_span(p.span):
                    carrier = _telemetry.trace_carrier()
            else:
                carrier = {}
            entry, free = self._entry(p, carrier, free)
            entries.append(entry)
            inbox_ids += p.inbox_ids
        try:
            # The COMMIT rides with the record when no task needs a statement after it; a
            # statement ahead (the speculated fast path's) opens the transaction with it.
            recorded = await store.record(
                conn, namespace=self._namespace, entries=entries, inbox_ids=inbox_ids, worker=self._identity,
                lease=self._lease_seconds, commit=all(p.plain for p in batch),
                ahead=ahead)
        except BaseException as exc:
            for p in batch:
                if p.span is not None:
                    p.span.set_status(StatusCode.ERROR, str(exc))
                    p.span.end()
            raise
        out.eager, out.kept, out.saved = recorded.leased, bool(recorded.kept), recorded.saved
        self._slots.reserve(len(out.eager))
        try:
            for p in batch:
                task, inst = p.task, p.inst
                with trace.use_span(p.span, end_on_exit=True) if p.span is not None else contextlib.nullcontext():
                    if not p.plain:
                        await store.record_extras(conn, task, self._namespace, p.extras, p.events, p.family)
                _telemetry.workflow_task_duration.record(time.monotonic() - p.began, {
                    "workflow_type": task.workflow_type, "outcome": "closed" if inst.closed else "ok"})
                out.counted.append((task.started is not None, inst.info.workflow_type, p.close_status))
                self._stats.workflow_tasks += 1
                if inst.closed:
                    self._cache.evict(task.run_id)
                else:
                    self._cache.keep(task.run_id, inst)
        except BaseException:
            self._slots.unreserve(len(out.eager))  # the caller abandons the batch: its leases were never returned
            raise
        return out

    def _entry(self, p: Activation, carrier: dict[str, str], free: int) -> tuple[dict[str, Any], int]:
        """One task's part of ``record_workflow_tasks``, and the free slots left after the
        activities it leases eagerly."""
        task, events = p.task, p.events
        activities = []
        failure: Any = None
        for ev in events:
            # wait_cancellation_completed: never leased eagerly (the cancel would have to wait
            # for a lease renewal), cancelled by request_activity_cancels (the task's extras).
            if ev.type == h.ACTIVITY_SCHEDULED:
                mine = free > 0 and ev.data["queue"] in self._queues \
                    and ev.data["activity_type"] in self._activity_types and ev.seq not in p.wait_cancels \
                    and queues_in_order(ev.data.get("options"))
                free -= mine
                activity = {"seq": ev.seq, **ev.data, "eager": mine}
                if carrier:  # in the row's options only, not in history
                    activity["options"] = {**(ev.data.get("options") or {}), "trace": carrier}
                activities.append(activity)
            elif ev.type in h.TERMINAL_EVENTS:
                failure = ev.data.get("failure")
                if ev.type == h.WORKFLOW_FAILED and failure:
                    failure = {"type": failure.get("type"), "message": failure.get("message")}
        return {
            "run_id": task.run_id,
            "events": [{"seq": e.seq, "type": e.type, "data": e.data} for e in events],
            "workflow_id": task.workflow_id, "workflow_type": task.workflow_type,
            "workflow_queue": task.queue, "activities": activities if p.close_status is None else [],
            "close_status": p.close_status, "failure": failure or None,
        }, free

    async def _close_without_code(self, conn: Conn, task: TaskState, inbox_ids: list[int],
                                  closing: tuple[str, str, dict[str, Any], dict[str, Any]],
                                  closed: list[Counted]) -> None:
        """Closes a run for a terminate request or its execution timeout (see
        ``lifecycle.closing_input``): appends the closing event alone, no code runs."""
        run_id = task.run_id
        status = closing[1]
        self._cache.evict(run_id)
        await store.close_without_code(conn, task, namespace=self._namespace, inbox_ids=inbox_ids,
                                       worker=self._identity, lease=self._lease_seconds, closing=closing)
        closed.append((task.started is not None, task.workflow_type, status))
        self._stats.workflow_tasks += 1
        log.info("run %s of %s closed %s without running code", run_id, task.workflow_id, status,
                 extra={"workflow_id": task.workflow_id, "run_id": run_id})


def queues_in_order(options: dict[str, Any] | None) -> bool:
    """Whether an activity may be leased eagerly: not when a concurrency key must take a
    slot first. A priority or a fairness key orders the queue, which an activity leased to a
    worker with a free slot does not wait in (a busy worker leases none eagerly)."""
    return not options or "concurrency_key" not in options


def task_span(task: TaskState, carrier: Any, start_ns: int) -> Span:
    """The span of one workflow task, a child of the run's start (its stored trace context).

    One per task actually run: replaying history on a cache miss happens inside it and
    emits nothing of its own, so a replay never duplicates the spans of earlier tasks.
    """
    return tracer.start_span("cairn.workflow_task", context=_telemetry.context_of(carrier), start_time=start_ns,
                             attributes={"cairn.workflow_id": task.workflow_id,
                                         "cairn.workflow_type": task.workflow_type,
                                         "cairn.run_id": task.run_id, "cairn.history_length": task.last_seq})
