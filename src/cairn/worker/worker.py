"""The worker process: claims workflow tasks and activity attempts from Postgres.

One asyncio loop (uvloop when run by the CLI), one connection pool, one LISTEN
connection. Workflow tasks run in one transaction each, holding the task row's lock;
activity attempts run outside any transaction, under a lease renewed by one batched
statement per flush, and record their outcome fenced by the attempt token.

:class:`Worker` builds its components and wires them, each with what it uses:

- :class:`~cairn.worker.tasks.TaskRunner`: the workflow pollers (claim, run, record) and
  the latency lane (one task at a NOTIFY while every poller is busy);
- :class:`~cairn.worker.outcomes.OutcomeDeliverer`: the fast path (outcomes with the tasks
  they trigger, in groups);
- :class:`~cairn.worker.activities.ActivityRunner`: activity attempts, heartbeats, leases,
  the reaper;
- :class:`~cairn.worker.answers.QueryAnswerer`: queries;
- :class:`~cairn.worker.maintenance.Maintenance`: timers, queue depth, wake-ups, LISTEN.

They share the sticky :class:`~cairn.worker.cache.Cache`, the activity
:class:`~cairn.worker.slots.Slots`, the :class:`~cairn.worker.wakes.Wakes` and the
:class:`~cairn.worker.wakes.Pools`, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import random
import socket
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from cairn.activity import ActivityDefinition
from cairn.activity import definition_of as activity_definition
from cairn.engine.loop import install_guard
from cairn.errors import ConfigurationError
from cairn.options import check_namespace, check_queue
from cairn.store import db
from cairn.store import tasks as store_tasks
from cairn.store.db import CONNECTION_OPTIONS
from cairn.store.transactions import new_pool
from cairn.store.workers import Load, Registration
from cairn.worker.activities import LEASE_SECONDS, ActivityRunner
from cairn.worker.answers import QueryAnswerer
from cairn.worker.cache import Cache
from cairn.worker.claims import ClaimPairs
from cairn.worker.maintenance import HEARTBEAT_SECONDS, Heartbeat, Maintenance
from cairn.worker.outcomes import Outbox, OutcomeDeliverer
from cairn.worker.slots import Slots
from cairn.worker.stats import WorkerStats
from cairn.worker.tasks import TaskRunner
from cairn.worker.wakes import Pools, Wakes
from cairn.workflow import WorkflowDefinition

log = logging.getLogger("cairn.worker")

POLL_INTERVAL_SECONDS = 1.0     # fallback poll when no NOTIFY arrives
DRAIN_GRACE_SECONDS = 30.0      # how long stop() lets running activities finish
DRAIN_STRAGGLERS_SECONDS = 5.0  # the batches claimed before stop() get this long to finish
# Idle-in-transaction cap on worker sessions: a wedged worker loses its workflow-task
# claim (a row lock) after this, instead of holding it for ever.
IDLE_TX_TIMEOUT_MS = 60_000
# The worker's sessions: synchronous commits, the idle-in-transaction cap, and generic plans
# for its prepared statements. Postgres otherwise keeps re-planning the claims (their
# generic plan's estimate loses to the custom one, so it never switches): 0.3 ms of
# planning for 0.05 ms of execution per claim, on every idle worker's wake-up. Every worker
# statement is keyed on indexed columns, so the generic plan is the custom one -- but the plan
# is made once, with the statistics of that moment: made while a table was young (a worker
# started on a new database), it read the whole table by a sequential scan on every call,
# and went on doing so as the table grew (runs), or filled with dead rows between vacuums
# (activity_tasks, inbox: 1,500 rows read per call in W2). No sequential scans then: every
# worker statement has an index path bounded by its keys (schema 0028), which the planner
# now takes whatever the statistics say (a table without an index is still scanned).
WORKER_CONNECTION_OPTIONS = (f"{CONNECTION_OPTIONS} -c idle_in_transaction_session_timeout={IDLE_TX_TIMEOUT_MS}"
                             " -c plan_cache_mode=force_generic_plan -c enable_seqscan=off")
# Activity code (breakers, rate limits, streamed text) uses a pool of its own, never the
# engine's: a storm of failing LLM calls cannot starve lease renewals, claims or outcome
# records. Activity code holds a connection for one step at a time (never across a call,
# never two at once), so a few connections serve all activity_concurrency attempts; the
# engine's pool holds one per workflow poller and one for the latency lane (TaskRunner.lane:
# waiting for a busy pool's connection would defeat it), plus ENGINE_POOL_EXTRA for the deliverer,
# flusher, activity poller, maintenance and outcome writes; the flusher's lease renewals
# have that one session to themselves (Pools.renewals).
ACTIVITY_POOL_MAX = 8
ENGINE_POOL_EXTRA = 4


def _definitions(objs: Iterable[Any], attr: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for obj in objs:
        kind = attr.strip("_").split("_")[1]
        d = activity_definition(obj) if kind == "activity" else getattr(obj, attr, None)
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


class Worker:
    """Runs workflows and activities from the given queues until stopped.

    Args:
        url: the database (default: ``CAIRN_DATABASE_URL``, else the embedded server).
        workflows: ``@workflow.defn`` functions this worker runs.
        activities: ``@activity.defn`` functions this worker runs.
        queues: the queues it claims from.
        workflow_concurrency: workflow tasks in flight at once (one connection each).
        activity_concurrency: activity attempts in flight at once.
        cache_size: live workflow instances kept (LRU); a miss replays history.
        identity: a name for this worker in leases, history and ``cairn workers`` (default
            host:pid:random); unique per namespace: a worker of the same identity takes over
            the row of an earlier one.
        heartbeat_interval: how often, in seconds, the worker writes its row in
            ``cairn.workers``; it counts as live for three intervals after each.
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
        heartbeat_interval: float = HEARTBEAT_SECONDS,
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
        if not 0 < heartbeat_interval < 3600:  # NaN fails too
            raise ConfigurationError("heartbeat_interval must be more than 0 and less than 3600 seconds")
        self.url = url
        self.namespace = check_namespace(namespace)
        self.module = module
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.workflow_concurrency = workflow_concurrency
        self.activity_concurrency = activity_concurrency
        self.cache_size = cache_size
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.stats = WorkerStats()
        self._started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._claimers: list[asyncio.Task[None]] = []  # pollers and the lane: they stop claiming on stop()
        self._heartbeat: Heartbeat | None = None
        rng = random.Random()
        # What the components share, each handed explicitly to those that use it.
        self._pools = Pools()
        self._cache = Cache(cache_size)
        self._slots = Slots(activity_concurrency)
        self._wakes = Wakes(poll_interval, rng)
        outbox = Outbox()
        pools, stats, wakes, cache, slots = self._pools, self.stats, self._wakes, self._cache, self._slots
        self._answers = QueryAnswerer(pools=pools, stats=stats, wakes=wakes, cache=cache, workflows=self.workflows,
                                      queues=self.queues, namespace=self.namespace, rng=rng)
        self._activities = ActivityRunner(
            pools=pools, stats=stats, wakes=wakes, cache=cache, slots=slots, outbox=outbox,
            activities=self.activities, workflow_types=frozenset(self.workflows), queues=self.queues,
            namespace=self.namespace, identity=self.identity, lease_seconds=lease_seconds, rng=rng)
        self._workflow_tasks = TaskRunner(
            pools=pools, stats=stats, wakes=wakes, cache=cache, slots=slots, workflows=self.workflows,
            activities=self.activities, queues=self.queues, namespace=self.namespace,
            identity=self.identity, lease_seconds=lease_seconds, spawn=self._activities.spawn,
            tasks_recorded=self._answers.tasks_recorded)
        self._deliverer = OutcomeDeliverer(
            pools=pools, stats=stats, wakes=wakes, cache=cache, slots=slots, outbox=outbox,
            tasks=self._workflow_tasks, identity=self.identity, spawn=self._activities.spawn)
        (wq, wt) = ClaimPairs(self.queues, self.workflows).arrays()
        (aq, at) = ClaimPairs(self.queues, self.activities).arrays()
        self._maintenance = Maintenance(
            pools=pools, stats=stats, wakes=wakes, queues=self.queues, namespace=self.namespace, rng=rng,
            next_due_params={"namespace": namespace, "workflow_queues": wq, "workflow_types": wt,
                             "activity_queues": aq, "activity_types": at, "now": None},
            reap_expired=self._activities.reap_expired)

    def _registration(self) -> Registration:
        """What this worker says about itself in ``cairn.workers``."""
        return Registration(
            namespace=self.namespace, identity=self.identity, host=socket.gethostname(), pid=os.getpid(),
            queues=self.queues, workflow_types=sorted(self.workflows), activity_types=sorted(self.activities),
            workflow_slots=self.workflow_concurrency if self.workflows else 0,
            activity_slots=self.activity_concurrency, version=_version())

    def _load(self) -> Load:
        """Slots in use and counters, at a heartbeat."""
        pollers = self.workflow_concurrency if self.workflows else 0
        slots, stats = self._slots, self.stats
        return Load(workflow_slots_used=max(0, pollers - self._wakes.idle_pollers()),
                    activity_slots_used=min(slots.concurrency, len(slots.tasks) + slots.reserved),
                    workflow_tasks=stats.workflow_tasks, activities_completed=stats.activities_completed,
                    activities_failed=stats.activities_failed)

    @property
    def _pool(self) -> db.Pool | None:
        """The engine's connection pool (None until :meth:`run` opens it)."""
        return self._pools.engine

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Runs until :meth:`stop` is called (or the task is cancelled), then drains."""
        install_guard()
        url, embedded = await asyncio.to_thread(db.resolve_url, self.url)
        self.url = url
        await asyncio.to_thread(db.ensure_ready, url, embedded, who="worker")
        # The lease renewals' session is one of ENGINE_POOL_EXTRA's, taken out of the engine's
        # pool: a worker holds as many sessions as before.
        lane = 1 if self.workflows else 0  # the latency lane's claims (TaskRunner.lane)
        pool_size = self.workflow_concurrency + lane + ENGINE_POOL_EXTRA - (1 if self.activities else 0)
        pools = self._pools
        engine = pools.engine = new_pool(url, min_size=min(2, pool_size), max_size=pool_size,
                                          options=WORKER_CONNECTION_OPTIONS, hot=True)
        await engine.open(wait=True, timeout=30)
        if self.activities:
            # One session for lease renewals alone: queued behind the engine's claims and
            # records on a busy worker, a renewal came late and a live attempt's lease lapsed.
            pools.leases = new_pool(url, min_size=1, max_size=1, options=WORKER_CONNECTION_OPTIONS, hot=False)
            await pools.leases.open(wait=True, timeout=30)
            pools.activity = new_pool(url, min_size=1, max_size=min(ACTIVITY_POOL_MAX, self.activity_concurrency),
                                       options=CONNECTION_OPTIONS, hot=False)
            await pools.activity.open(wait=True, timeout=30)
        wakes = self._wakes
        try:
            await store_tasks.register_types(
                engine, namespace=self.namespace, queues=self.queues,
                workflows={d.name: d.signature.json_schema() for d in self.workflows.values()},
                activities=sorted(self.activities), module=self.module)
            heartbeat = self._heartbeat = Heartbeat(url=url, registration=self._registration(),
                                                    load=self._load, interval=self.heartbeat_interval)
            await heartbeat.register()
            wakes.workflow = [asyncio.Event() for _ in range(self.workflow_concurrency)]
            # The claimers return once the worker stops, after the batch they hold.
            claimers = [asyncio.create_task(self._workflow_tasks.poller(i), name=f"cairn-wf-{i}")
                        for i in range(self.workflow_concurrency if self.workflows else 0)]
            if self.workflows:
                claimers.append(asyncio.create_task(self._workflow_tasks.lane(), name="cairn-wf-lane"))
            if self.activities:
                claimers.append(asyncio.create_task(self._activities.poller(), name="cairn-act"))
            self._claimers = claimers
            self._tasks = [asyncio.create_task(self._maintenance.listen(url), name="cairn-listen"), *claimers]
            self._tasks.append(asyncio.create_task(self._maintenance.run(), name="cairn-maint"))
            self._tasks.append(asyncio.create_task(heartbeat.run(), name="cairn-heartbeat"))
            self._tasks.append(asyncio.create_task(self._activities.flusher(), name="cairn-flush"))
            self._tasks.append(asyncio.create_task(self._deliverer.run(), name="cairn-deliver"))
            if self.workflows:
                self._tasks.append(asyncio.create_task(self._answers.run(), name="cairn-query"))
            self._started.set()
            log.info("worker %s started on queues %s (%d workflows, %d activities)", self.identity,
                     self.queues, len(self.workflows), len(self.activities))
            await wakes.stopping.wait()
        finally:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DRAIN_GRACE_SECONDS
            if self._claimers:  # a poller's batch in flight is recorded, not rolled back
                await asyncio.wait(self._claimers, timeout=DRAIN_STRAGGLERS_SECONDS)
            await self._drain(deadline)
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            # A fast-path group committed as the drain ended may have leased attempts eagerly:
            # they run out before the pools close (left running, asyncio.run cancelled them
            # in the middle of their write, which then failed on the closed pool, logged as an
            # unhandled exception, and the attempt ran again elsewhere after its lease).
            await self._drain(max(deadline, loop.time() + DRAIN_STRAGGLERS_SECONDS))
            if self._heartbeat is not None:
                await self._heartbeat.stop()  # after the drain: stopped means nothing runs any more
            await engine.close()
            for pool in (pools.leases, pools.activity):
                if pool is not None:
                    await pool.close()
            await _close_llm_connections()
            self._activities.shutdown()
            self._cache.clear()
            log.info("worker %s stopped", self.identity)

    def stop(self) -> None:
        """Stops claiming new work; :meth:`run` then drains and returns."""
        self._wakes.stopping.set()
        self._wakes.everything()

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

    async def _drain(self, deadline: float) -> None:
        """Lets running attempts finish until ``deadline`` (the loop's clock), those started
        meanwhile included (a fast-path group committed as the worker stopped leases some
        eagerly), then cancels the rest."""
        loop = asyncio.get_running_loop()
        if running := self._activities.running:
            log.info("draining %d running activities (up to %.0f s)", len(running), deadline - loop.time())
        while (running := self._activities.running) and loop.time() < deadline:
            await asyncio.wait(running, timeout=deadline - loop.time())
        for t in running:
            t.cancel()
        if running:
            await asyncio.wait(running, timeout=5)
        # A cancelled synchronous activity runs on in its thread until its next heartbeat.
        if not await self._activities.threads_finished(deadline - loop.time()):
            log.warning("stopped with synchronous activities still running in their threads")

    # ------------------------------------------------------------ one step at a time (tests, tools)

    async def run_workflow_task(self) -> bool:
        """Claims ready workflow tasks (up to a batch) and runs them in one transaction.

        Returns False if none was ready. A batch shares BEGIN, the claim and COMMIT (one
        fsync); if any of its tasks fails at the database, the batch rolls back and its
        tasks are claimed one at a time next, so one bad run cannot hold up the others.
        """
        return await self._workflow_tasks.claim_and_run() is not False

    async def fire_timers(self) -> int:
        """Turns due timers into inbox events; returns how many fired."""
        return await self._maintenance.fire_timers()

    async def measure_queue_depth(self) -> None:
        """Counts ready work on this worker's queues for the ``cairn.queue.depth`` gauge."""
        await self._maintenance.measure_queue_depth()

    async def reap_expired(self) -> int:
        """Fails attempts past a deadline (or whose worker died); returns how many."""
        return await self._activities.reap_expired()

    async def answer_query(self) -> bool:
        """Claims one unanswered query, answers it and commits; False if there was none."""
        return await self._answers.answer_query()


def _version() -> str:
    """Cairn's installed version (as ``cairn --version`` says it)."""
    try:
        return importlib.metadata.version("cairn")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def _builtin_activities() -> list[Any]:
    """The LLM chat activity, if providers are configured. Providers are configured through
    ``cairn.llm`` (then already imported) or ``CAIRN_LLM_PROVIDERS``: otherwise there are none,
    and the LLM layer (httpx, ~80 ms) is not imported at all."""
    if "cairn.llm.providers" not in sys.modules and not os.environ.get("CAIRN_LLM_PROVIDERS"):
        return []
    from cairn.llm.chat import builtin_activities  # lazy: start-up time (see the docstring)

    return builtin_activities()


async def _close_llm_connections() -> None:
    """Closes this loop's kept-alive connections to LLM providers, if the LLM layer is loaded."""
    if "cairn.llm.providers" in sys.modules:
        from cairn.llm.providers import close_connections  # start-up time: never loads the LLM layer itself

        await close_connections()
