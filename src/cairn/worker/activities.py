"""The worker's activity attempts.

An attempt runs outside any transaction, under a lease renewed by one batched statement per
flush, and records its outcome fenced by the attempt token: through the fast path (the
worker's outbox, whose deliverer also runs the workflow task the outcome triggers) when this
worker can run the run's workflow task, else into the run's inbox. Expired leases of dead
workers are reaped here too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import StatusCode

from cairn import activity as activity_api
from cairn import telemetry as _telemetry
from cairn.activity import ActivityDefinition, ActivityInfo
from cairn.engine import history as h
from cairn.engine.instance import failure_of
from cairn.errors import ApplicationError, DatabaseUnavailable, InputValidationError, Refused
from cairn.payloads import to_payload
from cairn.store import activities as store
from cairn.store.activities import Attempt, Expired
from cairn.store.transactions import atomic
from cairn.telemetry import tracer
from cairn.worker.cache import Cache
from cairn.worker.claims import ClaimPairs
from cairn.worker.outcomes import Outbox
from cairn.worker.resilience import breaker_guard, reschedule
from cairn.worker.slots import Slots
from cairn.worker.stats import WorkerStats
from cairn.worker.wakes import Pools, Wakes, first_line, loop_failed

if TYPE_CHECKING:
    from cairn.store.db import Conn

log = logging.getLogger("cairn.worker")
T = TypeVar("T")

LEASE_SECONDS = 30.0            # an attempt's lease; renewed while its worker lives
FLUSH_INTERVAL_SECONDS = 0.5    # how often heartbeats are batched to the database
RECONNECT_WAIT_SECONDS = (0.2, 2.0)  # first and longest wait before writing an outcome again
REAP_LIMIT = 100                # expired attempts handled per pass (the maintenance loop repeats full ones)


@dataclass
class _Running:
    """An activity attempt this process runs."""

    run_id: str
    seq: int
    token: int
    task: asyncio.Task[None] | None = None
    flush_every: float = 0.5  # seconds between heartbeat flushes this attempt needs
    details: Any = None
    beat: bool = False
    lost: bool = False  # cancelled or superseded: its outcome must not be written
    # The workflow waits for this attempt to stop (wait_cancellation_completed): once it
    # stops it records ActivityCancelled instead of retrying.
    cancel_requested: bool = False
    is_async: bool = True
    told: bool = False  # a thread attempt's heartbeat has raised CancelledError
    recording: bool = False  # the user code is done and its outcome is being written


class _Threads(ThreadPoolExecutor):
    """The threads of synchronous activities, knowing which calls are still running."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running: set[concurrent.futures.Future[Any]] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.running.add(future)
        future.add_done_callback(self.running.discard)
        return future


class ActivityRunner:
    """Runs leased activity attempts and records their outcomes (see the module docstring)."""

    def __init__(self, *, pools: Pools, cache: Cache, stats: WorkerStats, slots: Slots, wakes: Wakes,
                 outbox: Outbox, activities: dict[str, ActivityDefinition], workflow_types: frozenset[str],
                 queues: list[str], namespace: str, identity: str, lease_seconds: float,
                 rng: random.Random) -> None:
        self._pools = pools
        self._cache = cache
        self._stats = stats
        self._slots = slots
        self._wakes = wakes
        self._outbox = outbox
        self._activities = activities
        self._workflow_types = workflow_types
        self._queues = queues
        self._namespace = namespace
        self._identity = identity
        self._lease_seconds = lease_seconds
        self._rng = rng
        self._pairs = ClaimPairs(queues, activities)  # what the claims take
        self._running: dict[tuple[str, int], _Running] = {}
        self._threads = _Threads(max_workers=min(32, slots.concurrency), thread_name_prefix="cairn-activity")
        self._slots_full = False  # the activity poller is idle because every slot is taken
        self._last_renewal = 0.0
        self._token_key: str | None = None  # the database's task-token key, read once

    @property
    def running(self) -> set[asyncio.Task[None]]:
        """The attempts running now (``Worker.run`` drains them when it stops)."""
        return set(self._slots.tasks)

    def shutdown(self) -> None:
        """Lets the threads of synchronous activities go (the worker has stopped)."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def threads_finished(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s for synchronous activities still running in their
        threads after their attempts ended (a cancelled attempt's function runs on until it
        notices, at its next heartbeat): a stopping worker lets them finish, as Temporal's
        does. True if none is left."""
        running = list(self._threads.running)
        if running and timeout > 0:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: concurrent.futures.wait(running, timeout=timeout))
        return not self._threads.running

    async def poller(self) -> None:
        """Claims attempts into free slots until the worker stops."""
        wakes = self._wakes
        while not wakes.stopping.is_set():
            wakes.activity.clear()
            free = self._slots.free()
            if free <= 0:
                self._slots_full = True
                await wakes.idle(wakes.activity)
                continue
            try:
                rows = await store.claim(self._pools.main(), namespace=self._namespace,
                                         pairs=self._pairs.next(min(free, 50)), worker=self._identity,
                                         lease=self._lease_seconds, low_lane="activity" in wakes.low_lanes)
            except Exception as exc:
                loop_failed("activity claim", exc)
                rows = []
                await asyncio.sleep(wakes.poll_interval)
            self.spawn(rows, reserved=False)
            if not rows or len(rows) == free:
                # Idle until a NOTIFY, or (when every slot is taken) until a slot frees up.
                self._slots_full = bool(rows)
                await wakes.idle(wakes.activity)
                self._slots_full = False

    def spawn(self, rows: list[Attempt], *, reserved: bool = True) -> None:
        """Starts leased attempts (claimed, or eagerly dispatched and so already reserved)."""
        if reserved:
            self._slots.unreserve(len(rows))
        for row in rows:
            running = _Running(row.run_id, row.seq, row.token)
            definition = self._activities.get(row.activity_type)
            running.is_async = definition is None or definition.is_async
            heartbeat_timeout = row.options.get("heartbeat_timeout")
            if heartbeat_timeout and heartbeat_timeout / 3 < FLUSH_INTERVAL_SECONDS:
                # Flush often enough that a heartbeating attempt meets a short timeout.
                running.flush_every = max(heartbeat_timeout / 3, 0.02)
                self._wakes.flush.set()
            stale = self._running.get((running.run_id, running.seq))
            if stale is not None and not stale.lost:
                # An older attempt of the same activity still runs here (it timed out): stop it.
                stale.lost = True
                if stale.task is not None:
                    stale.task.cancel()
            self._running[(running.run_id, running.seq)] = running
            t = asyncio.create_task(self._attempt(row, running), name=f"cairn-activity-{row.activity_type}")
            running.task = t
            self._slots.tasks.add(t)
            t.add_done_callback(self._activity_done)

    def _activity_done(self, t: asyncio.Task[None]) -> None:
        self._slots.tasks.discard(t)
        if self._slots_full:  # the poller waits for a free slot, not for a NOTIFY
            self._wakes.activity.set()

    async def _attempt(self, row: Attempt, running: _Running) -> None:
        """Runs one activity attempt and records what happened."""
        options = row.options
        name = row.activity_type
        key = (running.run_id, running.seq)

        def beat(details: Any) -> None:
            running.details = details
            running.beat = True
            if not running.is_async and (running.lost or running.cancel_requested) and not running.told:
                # A thread cannot be interrupted: its heartbeat tells it, once.
                running.told = True
                raise asyncio.CancelledError("the activity was cancelled")

        task_token = await self._task_token(running)
        if task_token is None:
            return  # the database is away: the lease lapses and the reaper retries the attempt
        info = ActivityInfo(
            activity_type=name, workflow_id=row.workflow_id, workflow_type=row.workflow_type,
            run_id=running.run_id, seq=running.seq, attempt=row.attempt, queue=row.queue,
            scheduled_at=row.scheduled_at, started_at=row.started_at,
            deadline=row.attempt_deadline, heartbeat_details=row.heartbeat_details, _beat=beat,
            worker=self._identity,
            task_token=task_token,
            _cancelled=lambda: running.lost or running.cancel_requested, _pool=self._pools.activity,
        )
        extra = {"workflow_id": info.workflow_id, "run_id": info.run_id, "activity": name, "attempt": info.attempt}
        began = time.monotonic()
        outcome = "lost"  # superseded, cancelled or unrecorded unless set below
        if info.attempt == 1 and info.started_at is not None and info.scheduled_at is not None:
            _telemetry.activity_schedule_to_start.record(
                max((info.started_at - info.scheduled_at).total_seconds(), 0.0), {"activity": name})
        # A child of the workflow task that scheduled it (its context travels in the row's options).
        with tracer.start_as_current_span("cairn.activity", context=_telemetry.context_of(
                options.get("trace")), attributes={
            "cairn.workflow_id": info.workflow_id, "cairn.workflow_type": info.workflow_type,
            "cairn.run_id": info.run_id, "cairn.activity": name, "cairn.activity_seq": info.seq,
            "cairn.attempt": info.attempt,
        }) if _telemetry.tracing() else contextlib.nullcontext(trace.INVALID_SPAN) as span:
            limit: asyncio.Timeout | None = None
            timeout_error: Exception | None = None
            try:
                try:
                    definition = self._activities.get(name)
                    if definition is None:
                        raise ApplicationError(f"this worker has no activity {name!r}", type="ActivityNotRegistered")
                    args = definition.signature.validate_args(row.input, f"activity {name}")
                    token = activity_api._current.set(info)
                    try:
                        timeout, timeout_error = _attempt_timeout(options, row)
                        async with breaker_guard(self._pools.activity, definition), \
                                asyncio.timeout(timeout) as limit:
                            result = await definition.call(args, self._threads)
                    finally:
                        activity_api._current.reset(token)
                    try:
                        payload = to_payload(result)
                    except InputValidationError as bad:
                        # Running it again would give the same result: fail for good.
                        raise ApplicationError(f"activity {name} returned a result that cannot be recorded: {bad}",
                                               type="ResultNotRecordable", non_retryable=True) from None
                except asyncio.CancelledError:
                    raise
                except activity_api.CompleteAsync:
                    running.recording = True
                    outcome = "async"
                    await self._detach(running, extra)
                    return
                except activity_api.Reschedule as exc:
                    running.recording = True
                    outcome = "rescheduled"
                    span.set_attribute("cairn.reschedule", f"{exc.kind}: {exc.reason}")
                    await self._reschedule(row, running, exc, extra)
                    return
                except Exception as exc:
                    running.recording = True
                    if isinstance(exc, TimeoutError) and limit is not None and limit.expired() and timeout_error:
                        exc = timeout_error
                    outcome = "failed"
                    span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                    await self._failed(row, running, exc, extra)
                    return
                running.recording = True
                try:
                    ok = await self._deliver(running.run_id, running.seq, running.token, h.ACTIVITY_COMPLETED,
                                             {"activity_seq": running.seq, "result": payload, "attempt": info.attempt},
                                             row)
                except Refused as exc:
                    if exc.integrity:
                        raise
                    # The database refused the result itself: fail the activity with that cause
                    # rather than let the lease lapse and retry it for ever.
                    await self._failed(row, running, ApplicationError(
                        f"the result could not be recorded: {exc}", type="ResultNotRecordable",
                        non_retryable=True), extra)
                    return
                if ok:
                    outcome = "completed"
                    self._stats.activities_completed += 1
                else:
                    log.info("result of %s dropped: the attempt was superseded or cancelled", name, extra=extra)
            except asyncio.CancelledError:
                if running.cancel_requested and not running.lost:
                    outcome = "cancelled"
                    await self._cancelled(running, info.attempt, name, extra)
                elif not running.lost and self._wakes.stopping.is_set():
                    outcome = "released"
                    pool = self._pools.main()
                    await self._outlasting_outages(lambda: store.release(
                        pool, run_id=running.run_id, seq=running.seq, token=running.token))
                    log.info("released %s for another worker (draining)", name, extra=extra)
            except Exception:
                # The outcome could not be written (the database is away): the lease lapses
                # and the reaper retries the attempt elsewhere.
                log.exception("could not record the outcome of %s", name, extra=extra)
            finally:
                if self._running.get(key) is running:
                    del self._running[key]
                span.set_attribute("cairn.outcome", outcome)
                _telemetry.activity_duration.record(time.monotonic() - began, {"activity": name, "outcome": outcome})

    async def _task_token(self, running: _Running) -> str | None:
        """The attempt's task token (the database's key is read at the first attempt); None,
        and the attempt dropped, if the key cannot be read."""
        if self._token_key is None:
            pool = self._pools.main()
            try:
                self._token_key = await self._outlasting_outages(lambda: store.token_key(pool))
            except Exception:
                log.exception("could not read the task-token key; activity %d of run %s dropped", running.seq,
                              running.run_id)
                if self._running.get((running.run_id, running.seq)) is running:
                    del self._running[(running.run_id, running.seq)]
                return None
        return activity_api.make_task_token(self._token_key, running.run_id, running.seq, running.token)

    async def _detach(self, running: _Running, extra: dict[str, Any]) -> None:
        """activity.raise_complete_async(): the attempt stays open, no longer tied to this
        process (the lease stops lapsing), until an outside system completes, fails or
        heartbeats it by its task token, or one of its deadlines passes (the reaper)."""
        pool = self._pools.main()
        if await self._outlasting_outages(lambda: store.detach(
                pool, run_id=running.run_id, seq=running.seq, token=running.token, worker=self._identity)):
            log.info("activity %s will be completed asynchronously", extra["activity"], extra=extra)
        else:
            log.info("activity %s was completed (or superseded) before it left for asynchronous completion",
                     extra["activity"], extra=extra)

    async def _reschedule(self, row: Attempt, running: _Running, exc: activity_api.Reschedule,
                          extra: dict[str, Any]) -> None:
        """activity.Reschedule: the attempt goes back without being counted (see resilience)."""
        if running.cancel_requested:
            await self._cancelled(running, row.attempt, row.activity_type, extra)
            return
        pool = self._pools.main()
        done = await self._outlasting_outages(
            lambda: reschedule(pool, row, running.token, exc, self._rng, self._identity))
        if done == "rescheduled":
            self._stats.activities_rescheduled += 1
            _telemetry.activity_reschedules.add(1, {"activity": row.activity_type, "kind": exc.kind})

    async def _cancelled(self, running: _Running, attempt: int, name: str, extra: dict[str, Any]) -> None:
        """Records that a cancel-requested attempt stopped (wait_cancellation_completed)."""
        pool = self._pools.main()
        ok = await self._outlasting_outages(lambda: store.complete(
            pool, run_id=running.run_id, seq=running.seq, token=running.token, event_type=h.ACTIVITY_CANCELLED,
            data={"activity_seq": running.seq, "attempt": attempt, "started": True}))
        if ok:
            log.info("activity %s stopped after a cancel request", name, extra=extra)

    async def _failed(self, row: Attempt, running: _Running, exc: BaseException,
                      extra: dict[str, Any]) -> None:
        if running.cancel_requested:
            # Stopped, by failing, after the workflow asked it to: no retry.
            await self._cancelled(running, row.attempt, row.activity_type, extra)
            return
        failure = failure_of(exc)
        non_retryable = isinstance(exc, InputValidationError) or bool(failure.get("non_retryable"))
        await self._fail_attempt(row, failure, non_retryable, extra, beat=running)

    async def _fail_attempt(self, row: Attempt | Expired, failure: dict[str, Any], non_retryable: bool,
                            extra: dict[str, Any], conn: Conn | None = None, beat: _Running | None = None) -> None:
        """Retries a failed attempt after its backoff, or records the activity as failed."""
        run_id, seq, token, attempt = row.run_id, row.seq, row.token, row.attempt
        delay, retry_state = activity_api.retry_decision(row.options, attempt, failure, non_retryable, self._rng)
        if delay is not None:
            beaten = bool(beat and beat.beat)
            details = beat.details if beat is not None and beaten else None
            if conn is not None:
                ok = await store.retry(None, run_id=run_id, seq=seq, token=token, delay=delay, failure=failure,
                                       beat=beaten, details=details, conn=conn)
            else:
                pool, retry_delay = self._pools.main(), delay
                ok = await self._outlasting_outages(lambda: store.retry(
                    pool, run_id=run_id, seq=seq, token=token, delay=retry_delay, failure=failure, beat=beaten,
                    details=details))
            if ok:
                self._stats.activities_retried += 1
                _telemetry.activity_retries.add(1, {"activity": row.activity_type})
                log.info("activity %s attempt %d failed (%s: %s); retry in %.2f s", row.activity_type, attempt,
                         failure.get("type"), failure.get("message"), delay, extra=extra)
                return
            # Not put back: the retry would start past the schedule-to-close deadline by the
            # database's clock (this host's may be off), or the attempt was superseded, and
            # then the fenced write below changes nothing either.
            retry_state = "schedule_to_close_timeout"
        if retry_state == "maximum_attempts" and activity_api.pauses_when_exhausted(row.options):
            await self._pause_exhausted(row, failure, extra, conn, beat)
            return
        data = {"activity_seq": seq, "failure": failure, "attempts": attempt, "retry_state": retry_state}
        if conn is None:
            ok = await self._deliver(run_id, seq, token, h.ACTIVITY_FAILED, data,
                                     row if isinstance(row, Attempt) else None)
        else:
            ok = await store.complete(None, run_id=run_id, seq=seq, token=token, event_type=h.ACTIVITY_FAILED,
                                      data=data, conn=conn)
        if ok:
            self._stats.activities_failed += 1
            log.info("activity %s failed for good after %d attempt(s) (%s)", row.activity_type, attempt,
                     retry_state, extra=extra)

    async def _pause_exhausted(self, row: Attempt | Expired, failure: dict[str, Any], extra: dict[str, Any],
                               conn: Conn | None, beat: _Running | None) -> None:
        """``RetryPolicy(on_exhausted="pause")``: the last attempt failed; the activity is
        held with its failure (``cairn pauses``) until an operator resumes or fails it."""
        beaten = bool(beat and beat.beat)
        params: dict[str, Any] = {
            "run_id": row.run_id, "seq": row.seq, "token": row.token, "failure": failure,
            "retry_state": "maximum_attempts", "by": self._identity, "beat": beaten,
            "details": beat.details if beat is not None and beaten else None,
            "note": f"{row.attempt} attempt(s) failed, the last with {failure.get('type')}: "
                    f"{failure.get('message')}"}
        if conn is not None:
            ok = await store.pause_exhausted(None, conn=conn, **params)
        else:
            pool = self._pools.main()
            ok = await self._outlasting_outages(lambda: store.pause_exhausted(pool, **params))
        if ok:
            log.warning("activity %s paused after %d failed attempt(s) (%s: %s): resume it with "
                        "`cairn activity unpause %s %d`", row.activity_type, row.attempt, failure.get("type"),
                        failure.get("message"), row.workflow_id, row.seq, extra=extra)

    async def _deliver(self, run_id: str, seq: int, token: int, event_type: str, data: dict[str, Any],
                       row: Attempt | None = None) -> bool:
        """Records an activity's outcome (fenced by its token); True if it was recorded.

        The fast path: when this worker can run the run's workflow task — it holds the run
        live in its cache, or it runs the run's workflow type on the run's workflow queue
        (then the task replays the history, as a claim would) — the outcome joins the next
        group that the deliverer (``cairn.worker.outcomes``) commits, where it is recorded
        together with the workflow task it triggers and the eager lease of the next
        activities, in one transaction. Otherwise (or if the group rolls back) it goes to
        the run's inbox.
        """
        runs_task = run_id in self._cache or (
            row is not None and row.workflow_type in self._workflow_types
            and row.workflow_queue in self._queues)
        if runs_task and not self._wakes.stopping.is_set():
            recorded = await self._outbox.deliver(
                {"run_id": run_id, "seq": seq, "token": token, "type": event_type, "data": data})
            if recorded is not None:
                return recorded
        pool = self._pools.main()
        return await self._outlasting_outages(lambda: store.complete(
            pool, run_id=run_id, seq=seq, token=token, event_type=event_type, data=data))

    async def _outlasting_outages(self, write: Callable[[], Awaitable[T]]) -> T:
        """Runs an attempt's fenced write, again while the database is away (a lost or
        terminated connection, a restart), for up to a lease.

        Giving up sooner lets the lease lapse, and the reaper then runs an attempt that had
        finished again: an LLM call answered while Postgres restarted was paid twice when
        this gave up after 3 s. A lease is the bound: by then another worker may own the
        attempt, and the token fences a late write off anyway, so trying again is safe
        even when a commit's answer was lost.
        """
        deadline = time.monotonic() + self._lease_seconds
        wait, longest = RECONNECT_WAIT_SECONDS
        while True:
            try:
                return await write()
            except DatabaseUnavailable as exc:  # a pool timeout and a server shutdown included
                if time.monotonic() + wait > deadline:
                    raise
                log.debug("database away (%s); writing again in %.1f s", first_line(exc), wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)

    # ------------------------------------------------------------ heartbeats and leases

    async def flusher(self) -> None:
        """Batches heartbeats and lease renewals of all running attempts into one UPDATE, on
        the renewals' own session (``Pools.renewals``), every third of a lease to the moment."""
        loop = asyncio.get_running_loop()
        flush = self._wakes.flush
        renew_every = self._lease_seconds / 3
        failed = False  # the last flush failed: wait a whole interval before the next
        while True:
            flush.clear()
            wait = min([FLUSH_INTERVAL_SECONDS, *(r.flush_every for r in self._running.values())])
            if self._running and not failed:
                # Wake when the renewal is due, not at the next flush after it: waking every
                # 0.5 s renewed a 2 s lease every 1 s, half of it gone before each renewal.
                wait = min(wait, max(self._last_renewal + renew_every - loop.time(), 0.0))
            failed = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flush.wait(), wait)
            renew_all = loop.time() - self._last_renewal >= renew_every
            rows = []
            for r in list(self._running.values()):
                if r.lost or not (renew_all or r.beat):
                    continue
                rows.append({"run_id": r.run_id, "seq": r.seq, "token": r.token, "beat": r.beat,
                             "details": r.details})
                r.beat = False
            if not rows:
                if renew_all:
                    self._last_renewal = loop.time()
                continue
            try:
                alive = await store.renew_leases(self._pools.renewals(), beats=rows, lease=self._lease_seconds,
                                                 worker=self._identity)
            except Exception as exc:
                log.warning("heartbeat flush failed: %s", exc)
                failed = True
                continue
            if renew_all:
                self._last_renewal = loop.time()
            for row in rows:
                key = (row["run_id"], row["seq"])
                owned = self._running.get(key)
                if alive.get(key) and owned is not None and owned.token == row["token"] and not owned.cancel_requested:
                    # The workflow waits for this attempt to stop (wait_cancellation_completed):
                    # cancel an async attempt; a thread sees it at activity.heartbeat().
                    owned.cancel_requested = True
                    if owned.is_async and owned.task is not None and not owned.recording:
                        owned.task.cancel()
                    continue
                if key not in alive and owned is not None and owned.token == row["token"] and not owned.lost:
                    # Cancelled by the workflow, timed out, or taken over: stop it.
                    owned.lost = True
                    # Never interrupt the write of an outcome: the row is gone because the
                    # attempt itself recorded it (the fence rejects it otherwise).
                    if owned.task is not None and not owned.recording:
                        owned.task.cancel()

    async def reap_expired(self) -> int:
        """Fails attempts past a deadline (or whose worker died); returns how many."""
        async with atomic(self._pools.main()) as c:
            rows = await store.expired(c, limit=REAP_LIMIT)
            for row in rows:
                now = row.now
                extra = {"workflow_id": row.workflow_id, "run_id": row.run_id,
                         "activity": row.activity_type, "attempt": row.attempt}
                if row.schedule_deadline is not None and row.schedule_deadline <= now:
                    failure = {"type": "ScheduleToCloseTimeout", "message": "schedule-to-close timeout exceeded",
                               "details": None}
                    await store.complete(None, run_id=row.run_id, seq=row.seq, token=row.token,
                                         event_type=h.ACTIVITY_FAILED, data={
                                             "activity_seq": row.seq, "failure": failure, "attempts": row.attempt,
                                             "retry_state": "schedule_to_close_timeout"}, conn=c)
                    continue
                if row.lease_owner is None:
                    continue
                if row.cancel_requested:
                    # Its worker died or it timed out after the workflow asked it to stop:
                    # it has stopped, do not retry it.
                    await store.complete(None, run_id=row.run_id, seq=row.seq, token=row.token,
                                         event_type=h.ACTIVITY_CANCELLED, data={
                                             "activity_seq": row.seq, "attempt": row.attempt, "started": True},
                                         conn=c)
                    continue
                if row.attempt_deadline is not None and row.attempt_deadline <= now:
                    kind, msg = "StartToCloseTimeout", "start-to-close timeout exceeded"
                elif row.heartbeat_deadline is not None and row.heartbeat_deadline <= now:
                    kind, msg = "HeartbeatTimeout", "no heartbeat within the heartbeat timeout"
                else:
                    kind, msg = "WorkerLost", f"worker {row.lease_owner} stopped renewing its lease"
                    self._stats.rescued += 1
                    _telemetry.lease_rescues.add(1, {"activity": row.activity_type})
                await self._fail_attempt(row, {"type": kind, "message": msg, "details": None}, False, extra,
                                         conn=c)
        return len(rows)


def _attempt_timeout(options: dict[str, Any], row: Attempt) -> tuple[float | None, ApplicationError]:
    """Seconds this attempt may run locally (start-to-close, bounded by schedule-to-close),
    and the error to report when that limit is reached."""
    limits: list[tuple[float, ApplicationError]] = []
    if options.get("start_to_close_timeout"):
        limits.append((float(options["start_to_close_timeout"]),
                       ApplicationError("start-to-close timeout exceeded", type="StartToCloseTimeout")))
    if row.schedule_deadline is not None:
        limits.append(((row.schedule_deadline - row.started_at).total_seconds(),
                       ApplicationError("schedule-to-close timeout exceeded", type="ScheduleToCloseTimeout")))
    if not limits:
        return None, ApplicationError("timeout", type="StartToCloseTimeout")
    seconds, error = min(limits, key=lambda limit: limit[0])
    return max(seconds, 0.001), error
