"""The worker process: claims workflow tasks and activity attempts from Postgres.

One asyncio loop (uvloop when run by the CLI), one connection pool, one LISTEN
connection. Workflow tasks run in one transaction each, holding the task row's lock;
activity attempts run outside any transaction, under a lease renewed by one batched
statement per flush, and record their outcome fenced by the attempt token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cairn import telemetry as _telemetry
from cairn.activity import ActivityDefinition
from cairn.engine import history as h
from cairn.engine.history import Event, check_history_length
from cairn.engine.instance import WorkflowInstance, failure_of, replay
from cairn.engine.loop import install_guard
from cairn.errors import (
    ConfigurationError,
    UnknownWorkflowType,
    WorkflowTaskFailed,
)
from cairn.options import check_namespace, check_queue
from cairn.store import db, durability
from cairn.store import lifecycle as _lifecycle
from cairn.store import transactions as _transactions
from cairn.store.db import CONNECTION_OPTIONS
from cairn.store.sql import q
from cairn.telemetry import tracer
from cairn.worker.activities import LEASE_SECONDS, _ActivityRunning, _Running, loop_failed
from cairn.worker.answers import _QueryAnswering
from cairn.worker.claims import ClaimPairs
from cairn.worker.outcomes import _FastPath
from cairn.worker.tasks import Prepared, count_runs
from cairn.workflow import WorkflowDefinition, WorkflowInfo

log = logging.getLogger("cairn.worker")

POLL_INTERVAL_SECONDS = 1.0     # fallback poll when no NOTIFY arrives
TASK_RETRY_MAX_SECONDS = 60.0   # cap of the backoff of a failing workflow task
DRAIN_GRACE_SECONDS = 30.0      # how long stop() lets running activities finish
# Idle-in-transaction cap on worker sessions: a wedged worker loses its workflow-task
# claim (a row lock) after this, instead of holding it for ever.
IDLE_TX_TIMEOUT_MS = 60_000
# The worker's sessions: synchronous commits, the idle-in-transaction cap, and generic plans
# for its prepared statements. Postgres otherwise keeps re-planning the claims (their
# generic plan's estimate loses to the custom one, so it never switches): 0.3 ms of
# planning for 0.05 ms of execution per claim, on every idle worker's wake-up. Every worker
# statement is keyed on indexed columns, so the generic plan is the custom one.
WORKER_CONNECTION_OPTIONS = (f"{CONNECTION_OPTIONS} -c idle_in_transaction_session_timeout={IDLE_TX_TIMEOUT_MS}"
                             " -c plan_cache_mode=force_generic_plan")
CLAIM_BATCH = 8                 # workflow tasks claimed and committed together
QUEUE_DEPTH_CAP = 100_000
# Activity code (breakers, rate limits, streamed text) uses a pool of its own, never the
# engine's: a storm of failing LLM calls cannot starve lease renewals, claims or outcome
# records. Activity code holds a connection for one step at a time (never across a call,
# never two at once), so a few connections serve all activity_concurrency attempts; the
# engine's pool holds one per workflow poller plus ENGINE_POOL_EXTRA for the deliverer,
# flusher, activity poller, maintenance and outcome writes.
ACTIVITY_POOL_MAX = 8
ENGINE_POOL_EXTRA = 4      # cairn.queue.depth counts at most this many ready tasks per queue and kind


@dataclass
class WorkerStats:
    """Counters, for tests and progress output."""

    workflow_tasks: int = 0
    workflow_task_failures: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    activities_completed: int = 0
    activities_failed: int = 0
    activities_retried: int = 0
    activities_rescheduled: int = 0  # activity.Reschedule: put back without burning an attempt
    timers_fired: int = 0
    rescued: int = 0
    fast_path: int = 0  # activity outcomes whose workflow task ran in the same transaction
    speculated: int = 0  # workflow tasks of the fast path run ahead from the cache (one round trip)
    speculation_missed: int = 0  # fast-path groups whose runs were not as cached (took the locked way)
    queries_from_cache: int = 0  # queries answered by a live cached instance
    queries_replayed: int = 0  # queries answered by replaying the history into a throwaway instance


def _definitions(objs: Iterable[Any], attr: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for obj in objs:
        kind = attr.strip("_").split("_")[1]
        d = getattr(obj, attr, None)
        if d is None:
            raise ConfigurationError(f"{obj!r} is not decorated with @{kind}.defn")
        d.signature.check(f"{kind} {d.name}")  # an annotation pydantic cannot validate
        if d.name in out and out[d.name] is not d:
            raise ConfigurationError(f"two definitions named {d.name!r}")
        out[d.name] = d
    return out


def collect(module: Any) -> tuple[list[Any], list[Any]]:
    """The workflow and activity functions defined or imported at a module's top level."""
    workflows, activities = [], []
    for value in vars(module).values():
        if isinstance(getattr(value, "__cairn_workflow__", None), WorkflowDefinition):
            workflows.append(value)
        if isinstance(getattr(value, "__cairn_activity__", None), ActivityDefinition):
            activities.append(value)
    return workflows, activities


class Worker(_QueryAnswering, _FastPath, _ActivityRunning):
    """Runs workflows and activities from the given queues until stopped.

    Args:
        url: the database (default: ``CAIRN_DATABASE_URL``, else the embedded server).
        workflows: ``@workflow.defn`` functions this worker runs.
        activities: ``@activity.defn`` functions this worker runs.
        queues: the queues it claims from.
        workflow_concurrency: workflow tasks in flight at once (one connection each).
        activity_concurrency: activity attempts in flight at once.
        cache_size: live workflow instances kept (LRU); a miss replays history.
        identity: a name for this worker in leases and history (default host:pid:random).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        workflows: Iterable[Callable[..., Any]] = (),
        activities: Iterable[Callable[..., Any]] = (),
        queues: Iterable[str] = ("default",),
        workflow_concurrency: int = 4,
        activity_concurrency: int = 100,
        cache_size: int = 1000,
        identity: str | None = None,
        namespace: str = "default",
        lease_seconds: float = LEASE_SECONDS,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        module: str | None = None,
    ) -> None:
        self.workflows: dict[str, WorkflowDefinition] = _definitions(workflows, "__cairn_workflow__")
        self.activities: dict[str, ActivityDefinition] = _definitions(
            [*activities, *_builtin_activities()], "__cairn_activity__")
        if not self.workflows and not self.activities:
            raise ConfigurationError("a worker needs at least one workflow or activity")
        self.queues = [check_queue(x) for x in dict.fromkeys(queues)]
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        if workflow_concurrency < 1 or activity_concurrency < 1 or cache_size < 1:
            raise ConfigurationError("concurrency and cache size must be at least 1")
        self.url = url
        self.namespace = check_namespace(namespace)
        self.module = module
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.workflow_concurrency = workflow_concurrency
        self.activity_concurrency = activity_concurrency
        self.cache_size = cache_size
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.stats = WorkerStats()
        self._workflow_pairs = ClaimPairs(self.queues, self.workflows)  # what the claims take
        self._activity_pairs = ClaimPairs(self.queues, self.activities)
        (wq, wt), (aq, at) = self._workflow_pairs.arrays(), self._activity_pairs.arrays()
        self._next_due_params = {"namespace": namespace, "workflow_queues": wq, "workflow_types": wt,
                                 "activity_queues": aq, "activity_types": at, "now": None}
        self._cache: OrderedDict[str, WorkflowInstance] = OrderedDict()
        self._running: dict[tuple[str, int], _Running] = {}
        self._pool: AsyncConnectionPool | None = None
        self._activity_pool: AsyncConnectionPool | None = None  # activity code's (see ACTIVITY_POOL_MAX)
        self._threads = ThreadPoolExecutor(max_workers=min(32, activity_concurrency),
                                           thread_name_prefix="cairn-activity")
        self._wf_wakes: list[asyncio.Event] = []
        self._idle_pollers: deque[int] = deque()  # workflow pollers waiting for a wake-up
        self._wf_pending = False  # a wake-up arrived while every poller was busy
        self._solo_claims = 0  # claims to make one task at a time (a batch failed)
        self._outbox: list[tuple[dict[str, Any], asyncio.Future[bool | None]]] = []  # fast-path outcomes
        self._outbox_ready = asyncio.Event()
        self._act_wake = asyncio.Event()
        self._maint_wake = asyncio.Event()
        self._query_wake = asyncio.Event()  # a query for one of our queues arrived
        self._queries_waiting = False  # a query waits for its run's first workflow task
        self._first_tasks = 0  # batches recorded with a new run's first task (see _query_answerer)
        self._flush_wake = asyncio.Event()  # an attempt with a short heartbeat timeout started
        self._stopping = asyncio.Event()
        self._started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._activity_tasks: set[asyncio.Task[None]] = set()
        self._last_renewal = 0.0
        self._reserved = 0  # activity slots promised to eager attempts not yet started
        self._slots_full = False  # the activity poller is idle because every slot is taken
        self._finishing = 0  # attempts whose outcomes the fast-path group being written records
        self._clock_offset = 0.0  # the database's clock minus this host's, as of the last task read
        self._rng = random.Random()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Runs until :meth:`stop` is called (or the task is cancelled), then drains."""
        install_guard()
        url, embedded = await asyncio.to_thread(db.resolve_url, self.url)
        self.url = url
        await asyncio.to_thread(_prepare_schema, url, embedded)
        pool_size = self.workflow_concurrency + ENGINE_POOL_EXTRA
        self._pool = db.Pool(
            url, min_size=min(2, pool_size), max_size=pool_size, open=False,
            kwargs={"autocommit": True, "options": WORKER_CONNECTION_OPTIONS},
            configure=_transactions.configure,
        )
        await self._pool.open(wait=True, timeout=30)
        if self.activities:
            self._activity_pool = db.Pool(
                url, min_size=1, max_size=min(ACTIVITY_POOL_MAX, self.activity_concurrency), open=False,
                kwargs={"autocommit": True, "options": CONNECTION_OPTIONS})
            await self._activity_pool.open(wait=True, timeout=30)
        try:
            await self._register_types()
            self._wf_wakes = [asyncio.Event() for _ in range(self.workflow_concurrency)]
            self._tasks = [asyncio.create_task(self._listen(), name="cairn-listen")]
            self._tasks += [asyncio.create_task(self._workflow_poller(i), name=f"cairn-wf-{i}")
                            for i in range(self.workflow_concurrency if self.workflows else 0)]
            if self.activities:
                self._tasks.append(asyncio.create_task(self._activity_poller(), name="cairn-act"))
            self._tasks.append(asyncio.create_task(self._maintenance(), name="cairn-maint"))
            self._tasks.append(asyncio.create_task(self._flusher(), name="cairn-flush"))
            self._tasks.append(asyncio.create_task(self._deliverer(), name="cairn-deliver"))
            if self.workflows:
                self._tasks.append(asyncio.create_task(self._query_answerer(), name="cairn-query"))
            self._started.set()
            log.info("worker %s started on queues %s (%d workflows, %d activities)", self.identity,
                     self.queues, len(self.workflows), len(self.activities))
            await self._stopping.wait()
        finally:
            await self._drain()
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self._pool.close()
            if self._activity_pool is not None:
                await self._activity_pool.close()
            await _close_llm_connections()
            self._threads.shutdown(wait=False, cancel_futures=True)
            for inst in self._cache.values():
                inst.dispose()
            self._cache.clear()
            log.info("worker %s stopped", self.identity)

    def stop(self) -> None:
        """Stops claiming new work; :meth:`run` then drains and returns."""
        self._stopping.set()
        self._wake_everything()

    async def started(self) -> None:
        """Waits until the worker is claiming work."""
        await self._started.wait()

    async def __aenter__(self) -> Worker:
        self._runner = asyncio.create_task(self.run())
        done, _ = await asyncio.wait({self._runner, asyncio.create_task(self._started.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._runner in done:
            self._runner.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        await self._runner

    async def _drain(self) -> None:
        running = set(self._activity_tasks)
        if running:
            log.info("draining %d running activities (up to %.0f s)", len(running), DRAIN_GRACE_SECONDS)
            _, pending = await asyncio.wait(running, timeout=DRAIN_GRACE_SECONDS)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    def _wake_everything(self) -> None:
        for ev in self._wf_wakes:
            ev.set()
        self._act_wake.set()
        self._maint_wake.set()
        self._query_wake.set()

    async def _register_types(self) -> None:
        """Records the workflow types (with their input schemas) and the activity types this
        worker runs on each of its queues: starts validate against them, and describe says
        when pending work has no worker."""
        assert self._pool is not None
        async with self._pool.connection() as c:
            for d in self.workflows.values():
                await c.execute(q("register_workflow_type"), {
                    "namespace": self.namespace, "name": d.name, "queues": self.queues,
                    "input_schema": Jsonb(d.signature.json_schema()), "module": self.module,
                })
            if self.activities:
                await c.execute(q("register_activity_types"), {
                    "namespace": self.namespace, "queues": self.queues, "names": sorted(self.activities)})

    async def _listen(self) -> None:
        """One dedicated connection LISTENs; a NOTIFY for one of our queues wakes pollers."""
        assert self.url is not None
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    for channel in ("cairn_workflow", "cairn_activity", "cairn_timer", "cairn_query"):
                        await conn.execute(f"LISTEN {channel}")
                    self._wake_everything()  # catch up on anything missed while away
                    async for note in conn.notifies():
                        if note.channel == "cairn_timer":
                            self._maint_wake.set()
                        elif note.channel == "cairn_query":
                            if note.payload in self.queues:
                                self._query_wake.set()
                        elif note.payload in self.queues:
                            if note.channel == "cairn_workflow":
                                self._wake_workflow_poller()
                            else:
                                self._act_wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listen connection lost (%s); polling until it is back", exc)
                await asyncio.sleep(1.0)

    async def _idle(self, event: asyncio.Event) -> None:
        """Waits for a wake-up, or the jittered fallback poll."""
        timeout = self.poll_interval * self._rng.uniform(0.8, 1.2)
        # asyncio.timeout, not wait_for: no task wrapped around the wait at every wake-up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    # ------------------------------------------------------------ workflow tasks

    def _wake_workflow_poller(self) -> None:
        """Wakes one idle workflow poller (a NOTIFY means one task, not one per poller)."""
        while self._idle_pollers:
            event = self._wf_wakes[self._idle_pollers.popleft()]
            if not event.is_set():
                event.set()
                return
        self._wf_pending = True  # all busy: the next one to finish looks again

    async def _workflow_poller(self, index: int) -> None:
        wake = self._wf_wakes[index]
        while not self._stopping.is_set():
            wake.clear()
            try:
                more = await self._claim_and_run()
            except Exception as exc:
                loop_failed("workflow task loop", exc)
                more = False
                await asyncio.sleep(self.poll_interval)
            if more:
                self._wake_workflow_poller()  # maybe more are ready: let a sibling look too
                continue
            if self._wf_pending:
                self._wf_pending = False
                continue
            self._idle_pollers.append(index)
            await self._idle(wake)
            if index in self._idle_pollers:
                self._idle_pollers.remove(index)

    async def run_workflow_task(self) -> bool:
        """Claims ready workflow tasks (up to a batch) and runs them in one transaction.

        Returns False if none was ready. A batch shares BEGIN, the claim and COMMIT (one
        fsync); if any of its tasks fails at the database, the batch rolls back and its
        tasks are claimed one at a time next, so one bad run cannot hold up the others.
        """
        return await self._claim_and_run() is not False

    async def _claim_and_run(self) -> bool | None:
        """:meth:`run_workflow_task`; returns False if no task was ready, True if more may be
        ready (a full batch, a task kept for an event it did not see, a failed batch), and
        None if the claim took every ready task it could see.

        A short batch means the claim saw no more ready tasks: claiming again at once would
        come back empty (two wasted round trips per task on an idle worker). Tasks that
        become ready later send a NOTIFY; a task that this batch kept (record_workflow_tasks
        found an event newer than the claim's snapshot) is claimed again right away.
        """
        assert self._pool is not None
        tasks: list[dict[str, Any]] = []
        eager: list[dict[str, Any]] = []
        limit = 1 if self._solo_claims else CLAIM_BATCH
        async with self._pool.connection() as conn:
            try:
                async with _transactions.transaction(conn):
                    tasks = await _transactions.execute(conn, "claim_workflow_task", {
                        "namespace": self.namespace, **self._workflow_pairs.next(limit), "now": None},
                        begin=True)
                    if not tasks:
                        return False
                    eager = await self._workflow_tasks(conn, tasks)
                count_runs(tasks)  # committed
                if any(t.get("started") is not None for t in tasks):
                    self._first_tasks += 1
                    if self._queries_waiting:
                        self._query_wake.set()  # a query may wait for one of these first tasks
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
                self._abandon(tasks, eager)
                if len(tasks) > 1:
                    self._solo_claims += len(tasks)  # find the culprit one task at a time
                elif isinstance(exc, psycopg.errors.UniqueViolation):
                    # Someone appended to this run since our cached view: replay next time.
                    log.info("workflow task of run %s lost a race (%s); it runs again", tasks[0]["run_id"], exc)
                elif tasks:
                    # The database refused what the code produced: back the task off and say
                    # why, instead of retrying it in a tight loop.
                    await self._fail_task(conn, tasks[0], exc)
                else:
                    raise
                return True
            except psycopg.errors.DeadlockDetected as exc:
                # A parent and a child closing at once wait for each other's task rows
                # (_lifecycle.close_family); Postgres aborted this side: it runs again.
                self._abandon(tasks, eager)
                log.info("workflow task batch lost a deadlock (%s); it runs again", exc)
                return True
            except BaseException:
                self._abandon(tasks, eager)
                raise
            finally:
                if limit == 1 and self._solo_claims:
                    self._solo_claims -= 1
        self._spawn(eager)
        return True if len(tasks) >= limit or any(t.get("_kept") for t in tasks) else None

    async def _fail_task(self, conn: psycopg.AsyncConnection[Any], task: dict[str, Any], exc: BaseException) -> None:
        """Records a failed workflow task (history untouched) and backs it off."""
        run_id = str(task["run_id"])
        error = failure_of(exc.cause if isinstance(exc, WorkflowTaskFailed) else exc)
        delay = min(2.0 ** task["failures"], TASK_RETRY_MAX_SECONDS)
        self.stats.workflow_task_failures += 1
        log.warning("workflow task of %s (run %s) failed, retrying in %.0f s: %s", task["workflow_id"], run_id,
                    delay, exc, extra={"workflow_id": task["workflow_id"], "run_id": run_id})
        await conn.execute(q("fail_workflow_task"), {"run_id": run_id, "now": None, "error": Jsonb(error),
                                                     "delay": delay})

    def _abandon(self, tasks: list[dict[str, Any]], eager: list[dict[str, Any]]) -> None:
        """A workflow task's transaction failed: forget its runs' cached state and reservations."""
        for task in tasks:
            self._evict(str(task["run_id"]))
        self._reserved = max(0, self._reserved - len(eager))

    async def _workflow_tasks(self, conn: psycopg.AsyncConnection[Any],
                              tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Runs claimed (locked) workflow tasks inside the caller's transaction: each task's
        code, then one statement recording them all (:meth:`_record_batch`).

        Returns the activity attempts they leased to this worker (eager dispatch), to be
        started once the transaction has committed.
        """
        prepared = []
        for task in tasks:
            p = await self._prepare(conn, task)
            if p is not None:
                prepared.append(p)
        return await self._record_batch(conn, prepared)

    async def _prepare(self, conn: psycopg.AsyncConnection[Any], task: dict[str, Any]) -> Prepared | None:
        """Runs one task's workflow code (from the cache, or replayed); None if nothing is
        left to record for it (the run is closed, the task failed, or it closed without code)."""
        run_id = str(task["run_id"])
        if task["status"] != "running":
            await conn.execute(q("finish_workflow_task"), {"run_id": run_id, "now": None})
            return None
        inbox = [tuple(item) for item in task["inbox"]]  # read with the task state
        last_seq = int(task["last_seq"])
        closing = _lifecycle.closing_input(inbox)
        if closing is not None:  # terminated by its parent's close, or timed out: no code runs
            await self._close_without_code(conn, task, [r[0] for r in inbox], closing)
            return None
        now: datetime = task["now"]
        self._clock_offset = now.timestamp() - time.time()
        began, began_ns = time.monotonic(), time.time_ns()  # the span starts here, once its parent is known
        inst: WorkflowInstance | None = None
        try:
            inst = self._cache.get(run_id)
            if inst is not None and inst.last_seq == last_seq:
                self._cache.move_to_end(run_id)
                self.stats.cache_hits += 1
            else:
                self._evict(run_id)
                self.stats.cache_misses += 1
                inst = await self._rebuild(conn, task)
            marker = Event(last_seq + 1, h.WORKFLOW_TASK_STARTED,
                           {"time": now.timestamp(), "worker": self.identity})
            inputs = [Event(last_seq + 2 + i, r[1], r[2]) for i, r in enumerate(inbox)]
            commands = inst.activate(marker, inputs)
        except (WorkflowTaskFailed, UnknownWorkflowType) as exc:
            self._evict(run_id)
            span = _task_span(task, inst.trace if inst is not None else task.get("started"), began_ns)
            span.set_attribute("cairn.task_failed", True)
            span.set_status(StatusCode.ERROR, str(exc))
            span.end()
            _telemetry.workflow_task_duration.record(time.monotonic() - began, {
                "workflow_type": task["workflow_type"], "outcome": "failed"})
            await self._fail_task(conn, task, exc)
            return None
        events = [marker, *inputs, *(c.as_event() for c in commands)]
        too_long = check_history_length(events, task["workflow_id"], run_id)
        if too_long is not None:  # fail the task (history untouched) with continue-as-new advice
            self._evict(run_id)
            await self._fail_task(conn, task, too_long)
            return None
        return Prepared.of(task, inst, events, [r[0] for r in inbox], began, began_ns)

    async def _rebuild(self, conn: psycopg.AsyncConnection[Any], task: dict[str, Any]) -> WorkflowInstance:
        """Cache miss: replay the whole history into a new instance."""
        definition = self.workflows.get(task["workflow_type"])
        if definition is None:
            raise UnknownWorkflowType(f"this worker has no workflow type {task['workflow_type']!r}")
        if task.get("started") is not None:  # a new run: its history is WorkflowStarted alone
            events = [Event(1, h.WORKFLOW_STARTED, task["started"])]
        elif task.get("history") is not None:  # read with the task state (the fast path)
            events = [Event(s, t, d) for s, t, d in task["history"]]
        else:
            cur = await conn.execute(q("read_history"), {"run_id": task["run_id"]})
            events = [Event(s, t, d, a) for s, t, d, a in await cur.fetchall()]
        info = WorkflowInfo(
            workflow_id=task["workflow_id"], run_id=str(task["run_id"]),
            workflow_type=task["workflow_type"], queue=task["queue"], namespace=self.namespace,
            start_time=task["created_at"],
        )
        try:
            return replay(definition, info, events)
        except WorkflowTaskFailed:
            raise
        except Exception as exc:  # NonDeterminismError and friends
            raise WorkflowTaskFailed(exc) from exc

    async def _record_batch(self, conn: psycopg.AsyncConnection[Any], batch: list[Prepared],
                            ahead: tuple[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Writes the outcomes of prepared workflow tasks, in their transaction: one
        ``record_workflow_tasks`` statement for the batch, then what few tasks need besides
        (timers, cancels, search attributes, child runs: a statement each, when present).

        Activities this worker can run, up to its free slots, are leased to it in the same
        statement (eager dispatch); their rows are returned. The record carries the COMMIT
        when no task needs a statement after it. ``ahead`` is a statement sent before the
        record in the same query, opening the transaction with it (the speculated fast
        path's check, see ``cairn.worker.outcomes``).
        """
        if not batch:
            return []
        # Attempts whose outcomes this transaction records (the fast path's group) give back
        # their slots when it commits, just before the eager attempts start: count them as
        # free, or under load every slot is held by an attempt waiting for its own group and
        # nothing is ever leased eagerly (each step then costs a NOTIFY and a claim).
        free = 0 if self._stopping.is_set() else \
            self.activity_concurrency - len(self._activity_tasks) - self._reserved + self._finishing
        tracing = _telemetry.tracing()
        entries: list[dict[str, Any]] = []
        inbox_ids: list[int] = []
        notify: set[str] = set()
        for p in batch:
            if tracing:  # current while recording: activities and child runs carry its context
                p.span = _task_span(p.task, p.inst.trace, p.began_ns)
                with trace.use_span(p.span):
                    carrier = _telemetry.trace_carrier()
            else:
                carrier = {}
            entry, free = self._entry(p, carrier, free)
            entries.append(entry)
            inbox_ids += p.inbox_ids
            if p.close_status is None:
                notify.update(a["queue"] for a in entry["activities"] if not a["eager"])
        try:
            # The COMMIT rides with the record when no task needs a statement after it; a
            # statement ahead (the speculated fast path's) opens the transaction with it.
            rows = await _transactions.execute(conn, "record_workflow_tasks", {
                "now": None, "namespace": self.namespace, "tasks": Jsonb(entries), "inbox_ids": inbox_ids,
                "worker": self.identity, "lease": self.lease_seconds, "notify_queues": sorted(notify)},
                begin=ahead is not None, commit=all(p.plain for p in batch), ahead=ahead)
        except BaseException as exc:
            for p in batch:
                if p.span is not None:
                    p.span.set_status(StatusCode.ERROR, str(exc))
                    p.span.end()
            raise
        leased: list[dict[str, Any]] = []
        kept: set[str] = set()
        for row in rows:
            if row["kept"]:  # an event arrived that this task did not see
                kept.add(str(row["run_id"]))
            else:
                leased.append(row)
        self._reserved += len(leased)
        try:
            for p in batch:
                task, inst = p.task, p.inst
                run_id = str(task["run_id"])
                if run_id in kept:
                    task["_kept"] = True
                with trace.use_span(p.span, end_on_exit=True) if p.span is not None else contextlib.nullcontext():
                    if not p.plain:
                        await self._record_extras(conn, p)
                _telemetry.workflow_task_duration.record(time.monotonic() - p.began, {
                    "workflow_type": task["workflow_type"], "outcome": "closed" if inst.closed else "ok"})
                task["_metrics"] = ("started" if task.get("started") is not None else None,
                                    inst.info.workflow_type, p.close_status)
                self.stats.workflow_tasks += 1
                if inst.closed:
                    self._evict(run_id)
                else:
                    self._cache[run_id] = inst
                    while len(self._cache) > self.cache_size:
                        _, old = self._cache.popitem(last=False)
                        old.dispose()
        except BaseException:
            self._reserved -= len(leased)  # the caller abandons the batch: its leases were never returned
            raise
        return leased

    def _entry(self, p: Prepared, carrier: dict[str, str], free: int) -> tuple[dict[str, Any], int]:
        """One task's part of ``record_workflow_tasks``, and the free slots left after the
        activities it leases eagerly."""
        task, events = p.task, p.events
        activities = []
        failure: Any = None
        for ev in events:
            # wait_cancellation_completed: never leased eagerly (the cancel would have to wait
            # for a lease renewal), cancelled by request_activity_cancels (_record_extras).
            if ev.type == h.ACTIVITY_SCHEDULED:
                mine = free > 0 and ev.data["queue"] in self.queues and ev.data["activity_type"] in self.activities \
                    and ev.seq not in p.wait_cancels
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
            "run_id": str(task["run_id"]),
            "events": [{"seq": e.seq, "type": e.type, "data": e.data} for e in events],
            "workflow_id": task["workflow_id"], "workflow_type": task["workflow_type"],
            "workflow_queue": task["queue"], "activities": activities if p.close_status is None else [],
            "close_status": p.close_status, "failure": failure or None,
        }, free

    async def _record_extras(self, conn: psycopg.AsyncConnection[Any], p: Prepared) -> None:
        """What a recorded task that is not plain needs besides ``record_workflow_tasks``."""
        for name, params in p.extras:
            await conn.execute(q(name), params)
        await _lifecycle.record_commands(conn, p.task, self.namespace, p.events, p.family)

    async def _close_without_code(self, conn: psycopg.AsyncConnection[Any], task: dict[str, Any],
                                  inbox_ids: list[int], closing: tuple[str, str, dict[str, Any], dict[str, Any]],
                                  ) -> None:
        """Closes a run for a terminate request or its execution timeout (see
        ``_lifecycle.closing_input``): appends the closing event alone, no code runs."""
        run_id = str(task["run_id"])
        etype, status, data, failure = closing
        self._evict(run_id)
        event = {"seq": int(task["last_seq"]) + 1, "type": etype, "data": data}
        await conn.execute(q("record_workflow_tasks"), {
            "now": None, "namespace": self.namespace, "inbox_ids": inbox_ids, "worker": self.identity,
            "lease": self.lease_seconds, "notify_queues": [], "tasks": Jsonb([{
                "run_id": run_id, "events": [event], "workflow_id": task["workflow_id"],
                "workflow_type": task["workflow_type"], "workflow_queue": task["queue"], "activities": [],
                "close_status": status, "failure": failure}])})
        await _lifecycle.close_family(conn, run_id, etype, data, status)
        task["_metrics"] = ("started" if task.get("started") is not None else None, task["workflow_type"], status)
        self.stats.workflow_tasks += 1
        log.info("run %s of %s closed %s without running code", run_id, task["workflow_id"], status,
                 extra={"workflow_id": task["workflow_id"], "run_id": run_id})

    def _evict(self, run_id: str) -> None:
        inst = self._cache.pop(run_id, None)
        if inst is not None:
            inst.dispose()

    # ------------------------------------------------------------ timers, timeouts, wake-ups

    async def _maintenance(self) -> None:
        """Fires due timers, times out expired attempts, and wakes pollers when work is due."""
        assert self._pool is not None
        while not self._stopping.is_set():
            self._maint_wake.clear()
            wait = self.poll_interval
            try:
                while await self.fire_timers() >= 100:
                    pass
                while await self.reap_expired() >= 100:
                    pass
                if _telemetry.queue_depth.due():
                    await self.measure_queue_depth()
                async with self._pool.connection() as c:
                    row = await (await c.execute(q("next_due"), self._next_due_params)).fetchone()
                due: timedelta | None = row[0] if row else None
                if due is not None:
                    if due.total_seconds() <= 0:
                        self._wake_workflow_poller()
                        self._act_wake.set()
                        wait = min(wait, 0.05) if due.total_seconds() > -1 else wait
                    else:
                        wait = min(wait, due.total_seconds() + 0.005)
            except Exception as exc:
                loop_failed("maintenance pass", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._maint_wake.wait(), wait * self._rng.uniform(0.9, 1.0) if wait > 0.1
                                       else wait)

    async def measure_queue_depth(self) -> None:
        """Counts ready work on this worker's queues for the ``cairn.queue.depth`` gauge."""
        assert self._pool is not None
        async with self._pool.connection() as c:
            cur = await c.execute(q("queue_depth"), {"queues": self.queues, "namespace": self.namespace,
                                                     "now": None, "cap": QUEUE_DEPTH_CAP})
            _telemetry.queue_depth.update(await cur.fetchall())

    async def fire_timers(self) -> int:
        """Turns due timers into inbox events; returns how many fired."""
        assert self._pool is not None
        async with self._pool.connection() as c:
            cur = await c.execute(q("fire_due_timers"), {"limit": 100, "now": None})
            rows = await cur.fetchall()
        for r in rows:
            if r[0] in self.queues:
                self._wake_workflow_poller()
        fired = int(rows[0][2]) if rows else 0
        self.stats.timers_fired += fired
        return fired


def _builtin_activities() -> list[Any]:
    """The LLM chat activity, if providers are configured. Providers are configured through
    ``cairn.llm`` (then already imported) or ``CAIRN_LLM_PROVIDERS``: otherwise there are none,
    and the LLM layer (httpx, ~80 ms) is not imported at all."""
    if "cairn.llm.providers" not in sys.modules and not os.environ.get("CAIRN_LLM_PROVIDERS"):
        return []
    from cairn.llm.chat import builtin_activities

    return builtin_activities()


async def _close_llm_connections() -> None:
    """Closes this loop's kept-alive connections to LLM providers, if the LLM layer is loaded."""
    if "cairn.llm.providers" in sys.modules:
        from cairn.llm.providers import close_connections

        await close_connections()


def _task_span(task: dict[str, Any], carrier: Any, start_ns: int) -> Span:
    """The span of one workflow task, a child of the run's start (its stored trace context).

    One per task actually run: replaying history on a cache miss happens inside it and
    emits nothing of its own, so a replay never duplicates the spans of earlier tasks.
    """
    return tracer.start_span("cairn.workflow_task", context=_telemetry.context_of(carrier), start_time=start_ns,
                             attributes={"cairn.workflow_id": task["workflow_id"],
                                         "cairn.workflow_type": task["workflow_type"],
                                         "cairn.run_id": str(task["run_id"]), "cairn.history_length": task["last_seq"]})


def _prepare_schema(url: str, embedded: bool) -> None:
    with db.connect_sync(url) as conn:
        durability.check_server(conn, who="worker")
        if embedded and not db.schema_status(conn).up_to_date:
            db.migrate(url)
        else:
            db.check_schema(conn)
