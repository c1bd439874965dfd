"""The worker's activity attempts (a mixin of :class:`cairn.worker.Worker`).

An attempt runs outside any transaction, under a lease renewed by one batched statement per
flush, and records its outcome fenced by the attempt token: through the fast path (the
worker's deliverer, which also runs the workflow task the outcome triggers) when this worker
can run the run's workflow task, else into the run's inbox. Expired leases of dead workers
are reaped here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cairn import activity as activity_api
from cairn import telemetry as _telemetry
from cairn.activity import ActivityDefinition, ActivityInfo
from cairn.engine import history as h
from cairn.engine.instance import WorkflowInstance, failure_of
from cairn.errors import ApplicationError, InputValidationError
from cairn.options import RetryPolicy
from cairn.payloads import to_payload
from cairn.store.sql import q
from cairn.telemetry import tracer
from cairn.worker.claims import ClaimPairs
from cairn.worker.resilience import breaker_guard, reschedule
from cairn.workflow import WorkflowDefinition

if TYPE_CHECKING:
    from cairn.worker import WorkerStats

log = logging.getLogger("cairn.worker")
T = TypeVar("T")

LEASE_SECONDS = 30.0            # an attempt's lease; renewed while its worker lives
FLUSH_INTERVAL_SECONDS = 0.5    # how often heartbeats are batched to the database
RECONNECT_WAIT_SECONDS = (0.2, 2.0)  # first and longest wait before writing an outcome again


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


class _ActivityRunning:
    """Runs leased activity attempts and records their outcomes (see the module docstring)."""

    _pool: AsyncConnectionPool | None
    _activity_pool: AsyncConnectionPool | None
    _cache: OrderedDict[str, WorkflowInstance]
    _running: dict[tuple[str, int], _Running]
    _threads: ThreadPoolExecutor
    _outbox: list[tuple[dict[str, Any], asyncio.Future[bool | None]]]
    _outbox_ready: asyncio.Event
    _act_wake: asyncio.Event
    _flush_wake: asyncio.Event
    _stopping: asyncio.Event
    _activity_tasks: set[asyncio.Task[None]]
    _activity_pairs: ClaimPairs
    _last_renewal: float
    _reserved: int
    _slots_full: bool
    _rng: random.Random
    workflows: dict[str, WorkflowDefinition]
    activities: dict[str, ActivityDefinition]
    activity_concurrency: int
    identity: str
    lease_seconds: float
    namespace: str
    poll_interval: float
    queues: list[str]
    stats: WorkerStats

    async def _idle(self, event: asyncio.Event) -> None:
        """Waits for a wake-up or the fallback poll (:class:`cairn.worker.Worker` defines it)."""
        raise NotImplementedError

    async def _activity_poller(self) -> None:
        assert self._pool is not None
        while not self._stopping.is_set():
            self._act_wake.clear()
            free = self.activity_concurrency - len(self._activity_tasks) - self._reserved
            if free <= 0:
                self._slots_full = True
                await self._idle(self._act_wake)
                continue
            try:
                async with self._pool.connection() as conn:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(q("claim_activity_tasks"), {
                        "namespace": self.namespace, **self._activity_pairs.next(min(free, 50)),
                        "worker": self.identity, "lease": self.lease_seconds, "now": None})
                    rows = await cur.fetchall()
            except Exception as exc:
                loop_failed("activity claim", exc)
                rows = []
                await asyncio.sleep(self.poll_interval)
            self._spawn(rows, reserved=False)
            if not rows or len(rows) == free:
                # Idle until a NOTIFY, or (when every slot is taken) until a slot frees up.
                self._slots_full = bool(rows)
                await self._idle(self._act_wake)
                self._slots_full = False

    def _spawn(self, rows: list[dict[str, Any]], *, reserved: bool = True) -> None:
        """Starts leased attempts (claimed, or eagerly dispatched and so already reserved)."""
        if reserved:
            self._reserved = max(0, self._reserved - len(rows))
        for row in rows:
            running = _Running(str(row["run_id"]), row["seq"], row["token"])
            definition = self.activities.get(row["activity_type"])
            running.is_async = definition is None or definition.is_async
            heartbeat_timeout = (row["options"] or {}).get("heartbeat_timeout")
            if heartbeat_timeout and heartbeat_timeout / 3 < FLUSH_INTERVAL_SECONDS:
                # Flush often enough that a heartbeating attempt meets a short timeout.
                running.flush_every = max(heartbeat_timeout / 3, 0.02)
                self._flush_wake.set()
            stale = self._running.get((running.run_id, running.seq))
            if stale is not None and not stale.lost:
                # An older attempt of the same activity still runs here (it timed out): stop it.
                stale.lost = True
                if stale.task is not None:
                    stale.task.cancel()
            self._running[(running.run_id, running.seq)] = running
            t = asyncio.create_task(self._attempt(row, running), name=f"cairn-activity-{row['activity_type']}")
            running.task = t
            self._activity_tasks.add(t)
            t.add_done_callback(self._activity_done)

    def _activity_done(self, t: asyncio.Task[None]) -> None:
        self._activity_tasks.discard(t)
        if self._slots_full:  # the poller waits for a free slot, not for a NOTIFY
            self._act_wake.set()

    async def _attempt(self, row: dict[str, Any], running: _Running) -> None:
        """Runs one activity attempt and records what happened."""
        options = row["options"]
        name = row["activity_type"]
        key = (running.run_id, running.seq)

        def beat(details: Any) -> None:
            running.details = details
            running.beat = True
            if not running.is_async and (running.lost or running.cancel_requested) and not running.told:
                # A thread cannot be interrupted: its heartbeat tells it, once.
                running.told = True
                raise asyncio.CancelledError("the activity was cancelled")

        info = ActivityInfo(
            activity_type=name, workflow_id=row["workflow_id"], workflow_type=row["workflow_type"],
            run_id=running.run_id, seq=running.seq, attempt=row["attempt"], queue=row["queue"],
            scheduled_at=row["scheduled_at"], started_at=row["started_at"],
            deadline=row["attempt_deadline"], heartbeat_details=row["heartbeat_details"], _beat=beat,
            worker=self.identity,
            _cancelled=lambda: running.lost or running.cancel_requested, _pool=self._activity_pool,
        )
        extra = {"workflow_id": info.workflow_id, "run_id": info.run_id, "activity": name, "attempt": info.attempt}
        began = time.monotonic()
        outcome = "lost"  # superseded, cancelled or unrecorded unless set below
        if info.attempt == 1 and info.started_at is not None and info.scheduled_at is not None:
            _telemetry.activity_schedule_to_start.record(
                max((info.started_at - info.scheduled_at).total_seconds(), 0.0), {"activity": name})
        # A child of the workflow task that scheduled it (its context travels in the row's options).
        with tracer.start_as_current_span("cairn.activity", context=_telemetry.context_of(
                (options or {}).get("trace")), attributes={
            "cairn.workflow_id": info.workflow_id, "cairn.workflow_type": info.workflow_type,
            "cairn.run_id": info.run_id, "cairn.activity": name, "cairn.activity_seq": info.seq,
            "cairn.attempt": info.attempt,
        }) if _telemetry.tracing() else contextlib.nullcontext(trace.INVALID_SPAN) as span:
            limit: asyncio.Timeout | None = None
            timeout_error: Exception | None = None
            try:
                try:
                    definition = self.activities.get(name)
                    if definition is None:
                        raise ApplicationError(f"this worker has no activity {name!r}", type="ActivityNotRegistered")
                    args = definition.signature.validate_args(row["input"], f"activity {name}")
                    token = activity_api._current.set(info)
                    try:
                        timeout, timeout_error = _attempt_timeout(options, row)
                        async with breaker_guard(self._activity_pool, definition), asyncio.timeout(timeout) as limit:
                            if definition.is_async:
                                result = await definition.fn(*args)
                            else:
                                ctx = contextvars.copy_context()
                                result = await asyncio.get_running_loop().run_in_executor(
                                    self._threads, lambda: ctx.run(definition.fn, *args))
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
                except (psycopg.DataError, psycopg.ProgrammingError) as exc:
                    # The database refused the result itself: fail the activity with that cause
                    # rather than let the lease lapse and retry it for ever.
                    await self._failed(row, running, ApplicationError(
                        f"the result could not be recorded: {exc}", type="ResultNotRecordable",
                        non_retryable=True), extra)
                    return
                if ok:
                    outcome = "completed"
                    self.stats.activities_completed += 1
                else:
                    log.info("result of %s dropped: the attempt was superseded or cancelled", name, extra=extra)
            except asyncio.CancelledError:
                if running.cancel_requested and not running.lost:
                    outcome = "cancelled"
                    await self._cancelled(running, info.attempt, name, extra)
                elif not running.lost and self._stopping.is_set():
                    outcome = "released"
                    await self._write(q("release_activity"), {
                        "run_id": running.run_id, "seq": running.seq, "token": running.token, "now": None})
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

    async def _reschedule(self, row: dict[str, Any], running: _Running, exc: activity_api.Reschedule,
                          extra: dict[str, Any]) -> None:
        """activity.Reschedule: the attempt goes back without being counted (see _resilience)."""
        if running.cancel_requested:
            await self._cancelled(running, row["attempt"], row["activity_type"], extra)
            return
        pool = self._pool
        assert pool is not None
        if await self._outlasting_outages(lambda: reschedule(pool, row, running.token, exc, self._rng)) \
                == "rescheduled":
            self.stats.activities_rescheduled += 1
            _telemetry.activity_reschedules.add(1, {"activity": row["activity_type"], "kind": exc.kind})

    async def _cancelled(self, running: _Running, attempt: int, name: str, extra: dict[str, Any]) -> None:
        """Records that a cancel-requested attempt stopped (wait_cancellation_completed)."""
        ok = await self._write(q("complete_activity"), {
            "run_id": running.run_id, "seq": running.seq, "token": running.token, "now": None,
            "type": h.ACTIVITY_CANCELLED,
            "data": Jsonb({"activity_seq": running.seq, "attempt": attempt, "started": True})})
        if ok:
            log.info("activity %s stopped after a cancel request", name, extra=extra)

    async def _failed(self, row: dict[str, Any], running: _Running, exc: BaseException,
                      extra: dict[str, Any]) -> None:
        if running.cancel_requested:
            # Stopped, by failing, after the workflow asked it to: no retry.
            await self._cancelled(running, row["attempt"], row["activity_type"], extra)
            return
        failure = failure_of(exc)
        non_retryable = isinstance(exc, InputValidationError) or bool(failure.get("non_retryable"))
        await self._fail_attempt(row, running.run_id, running.seq, running.token, row["attempt"],
                                 failure, non_retryable, extra, beat=running)

    async def _fail_attempt(self, row: dict[str, Any], run_id: str, seq: int, token: int, attempt: int,
                            failure: dict[str, Any], non_retryable: bool, extra: dict[str, Any],
                            conn: psycopg.AsyncConnection[Any] | None = None,
                            beat: _Running | None = None) -> None:
        """Retries a failed attempt after its backoff, or records the activity as failed."""
        options = row["options"]
        policy = RetryPolicy.model_validate(options.get("retry_policy") or {})
        delay = policy.next_delay(attempt, str(failure.get("type")), non_retryable=non_retryable, rng=self._rng)
        retry_state = "non_retryable" if non_retryable or failure.get("type") in policy.non_retryable_error_types \
            else "maximum_attempts"
        if failure.get("type") == "ScheduleToCloseTimeout":
            delay, retry_state = None, "schedule_to_close_timeout"
        base = {"run_id": run_id, "seq": seq, "token": token, "now": None}
        if delay is not None:
            ok = await self._write(q("retry_activity"), {
                **base, "delay": delay, "failure": Jsonb(failure), "beat": bool(beat and beat.beat),
                "details": Jsonb(beat.details) if beat and beat.beat else None}, conn)
            if ok:
                self.stats.activities_retried += 1
                _telemetry.activity_retries.add(1, {"activity": row["activity_type"]})
                log.info("activity %s attempt %d failed (%s: %s); retry in %.2f s", row["activity_type"], attempt,
                         failure.get("type"), failure.get("message"), delay, extra=extra)
                return
            # Not put back: the retry would start past the schedule-to-close deadline by the
            # database's clock (this host's may be off), or the attempt was superseded, and
            # then the fenced write below changes nothing either.
            retry_state = "schedule_to_close_timeout"
        data = {"activity_seq": seq, "failure": failure, "attempts": attempt, "retry_state": retry_state}
        if conn is None:
            ok = await self._deliver(run_id, seq, token, h.ACTIVITY_FAILED, data, row)
        else:
            ok = await self._write(q("complete_activity"), {**base, "type": h.ACTIVITY_FAILED, "data": Jsonb(data)},
                                   conn)
        if ok:
            self.stats.activities_failed += 1
            log.info("activity %s failed for good after %d attempt(s) (%s)", row["activity_type"], attempt,
                     retry_state, extra=extra)

    async def _deliver(self, run_id: str, seq: int, token: int, event_type: str, data: dict[str, Any],
                       row: dict[str, Any] | None = None) -> bool:
        """Records an activity's outcome (fenced by its token); True if it was recorded.

        The fast path: when this worker can run the run's workflow task — it holds the run
        live in its cache, or it runs the run's workflow type on the run's workflow queue
        (then the task replays the history, as a claim would) — the outcome joins the next
        group that :meth:`_deliverer` commits, where it is recorded together with the
        workflow task it triggers and the eager lease of the next activities, in one
        transaction. Otherwise (or if the group rolls back) it goes to the run's inbox.
        """
        outcome = {"run_id": run_id, "seq": seq, "token": token, "type": event_type, "data": data}
        runs_task = run_id in self._cache or (
            row is not None and row.get("workflow_type") in self.workflows
            and row.get("workflow_queue") in self.queues)
        if runs_task and not self._stopping.is_set():
            done: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
            self._outbox.append((outcome, done))
            self._outbox_ready.set()
            recorded = await done
            if recorded is not None:
                return recorded
        return await self._write(q("complete_activity"), {**outcome, "data": Jsonb(data), "now": None})

    async def _write(self, sql: str, params: dict[str, Any],
                     conn: psycopg.AsyncConnection[Any] | None = None) -> bool:
        """Runs one fenced write; True if it changed a row. Retries connection failures
        (see :meth:`_outlasting_outages`)."""
        if conn is not None:
            cur = await conn.execute(sql.encode(), params)
            return cur.rowcount > 0 or (cur.description is not None and await cur.fetchone() is not None)

        async def once() -> bool:
            assert self._pool is not None
            async with self._pool.connection() as c:
                cur = await c.execute(sql.encode(), params)
                if cur.description is not None:
                    return await cur.fetchone() is not None
                return cur.rowcount > 0

        return await self._outlasting_outages(once)

    async def _outlasting_outages(self, write: Callable[[], Awaitable[T]]) -> T:
        """Runs an attempt's fenced write, again while the database is away (a lost or
        terminated connection, a restart), for up to a lease.

        Giving up sooner lets the lease lapse, and the reaper then runs an attempt that had
        finished again: an LLM call answered while Postgres restarted was paid twice when
        this gave up after 3 s. A lease is the bound: by then another worker may own the
        attempt, and the token fences a late write off anyway, so trying again is safe
        even when a commit's answer was lost.
        """
        deadline = time.monotonic() + self.lease_seconds
        wait, longest = RECONNECT_WAIT_SECONDS
        while True:
            try:
                return await write()
            except psycopg.OperationalError as exc:  # PoolTimeout and AdminShutdown included
                if time.monotonic() + wait > deadline:
                    raise
                log.debug("database away (%s); writing again in %.1f s", _first_line(exc), wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)

    # ------------------------------------------------------------ heartbeats and leases

    async def _flusher(self) -> None:
        """Batches heartbeats and lease renewals of all running attempts into one UPDATE."""
        loop = asyncio.get_running_loop()
        while True:
            self._flush_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_wake.wait(), min(
                    [FLUSH_INTERVAL_SECONDS, *(r.flush_every for r in self._running.values())]))
            renew_all = loop.time() - self._last_renewal >= self.lease_seconds / 3
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
                assert self._pool is not None
                async with self._pool.connection() as c:
                    cur = await c.execute(q("renew_activity_leases"), {
                        "beats": Jsonb(rows), "lease": self.lease_seconds, "worker": self.identity, "now": None})
                    alive = {(str(a), s): bool(cancel) for a, s, cancel in await cur.fetchall()}
            except Exception as exc:
                log.warning("heartbeat flush failed: %s", exc)
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
        assert self._pool is not None
        async with self._pool.connection() as c, c.transaction():
            cur = c.cursor(row_factory=dict_row)
            await cur.execute(q("expired_activity_tasks"), {"limit": 100, "now": None})
            rows = await cur.fetchall()
            for row in rows:
                now = row["now"]
                extra = {"workflow_id": row["workflow_id"], "run_id": str(row["run_id"]),
                         "activity": row["activity_type"], "attempt": row["attempt"]}
                if row["schedule_deadline"] is not None and row["schedule_deadline"] <= now:
                    failure = {"type": "ScheduleToCloseTimeout", "message": "schedule-to-close timeout exceeded",
                               "details": None}
                    await self._write(q("complete_activity"), {
                        "run_id": row["run_id"], "seq": row["seq"], "token": row["token"], "now": None,
                        "type": h.ACTIVITY_FAILED, "data": Jsonb({
                            "activity_seq": row["seq"], "failure": failure, "attempts": row["attempt"],
                            "retry_state": "schedule_to_close_timeout"})}, c)
                    continue
                if row["lease_owner"] is None:
                    continue
                if row["cancel_requested"]:
                    # Its worker died or it timed out after the workflow asked it to stop:
                    # it has stopped, do not retry it.
                    await self._write(q("complete_activity"), {
                        "run_id": row["run_id"], "seq": row["seq"], "token": row["token"], "now": None,
                        "type": h.ACTIVITY_CANCELLED, "data": Jsonb({
                            "activity_seq": row["seq"], "attempt": row["attempt"], "started": True})}, c)
                    continue
                if row["attempt_deadline"] is not None and row["attempt_deadline"] <= now:
                    kind, msg = "StartToCloseTimeout", "start-to-close timeout exceeded"
                elif row["heartbeat_deadline"] is not None and row["heartbeat_deadline"] <= now:
                    kind, msg = "HeartbeatTimeout", "no heartbeat within the heartbeat timeout"
                else:
                    kind, msg = "WorkerLost", f"worker {row['lease_owner']} stopped renewing its lease"
                    self.stats.rescued += 1
                    _telemetry.lease_rescues.add(1, {"activity": row["activity_type"]})
                await self._fail_attempt(row, str(row["run_id"]), row["seq"], row["token"], row["attempt"],
                                         {"type": kind, "message": msg, "details": None}, False, extra,
                                         conn=c)
        return len(rows)


def _attempt_timeout(options: dict[str, Any], row: dict[str, Any]) -> tuple[float | None, ApplicationError]:
    """Seconds this attempt may run locally (start-to-close, bounded by schedule-to-close),
    and the error to report when that limit is reached."""
    limits: list[tuple[float, ApplicationError]] = []
    if options.get("start_to_close_timeout"):
        limits.append((float(options["start_to_close_timeout"]),
                       ApplicationError("start-to-close timeout exceeded", type="StartToCloseTimeout")))
    if row.get("schedule_deadline") is not None:
        limits.append(((row["schedule_deadline"] - row["started_at"]).total_seconds(),
                       ApplicationError("schedule-to-close timeout exceeded", type="ScheduleToCloseTimeout")))
    if not limits:
        return None, ApplicationError("timeout", type="StartToCloseTimeout")
    seconds, error = min(limits, key=lambda limit: limit[0])
    return max(seconds, 0.001), error


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0]


def loop_failed(what: str, exc: Exception) -> None:
    """Logs a failed pass of one of the worker's loops, which then tries again: a lost
    database connection (a restart, a terminated session: an expected fault) in one line,
    anything else with its traceback."""
    if isinstance(exc, psycopg.OperationalError):
        log.warning("%s: %s; trying again", what, _first_line(exc))
    else:
        log.error("%s failed", what, exc_info=exc)
