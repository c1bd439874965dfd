"""The worker's side of resilience: ``activity.Reschedule`` and ``@activity.defn(breaker=...)``.

Kept out of ``cairn.worker.activities`` so that the attempt's hot path carries one line for each: an
activity without a breaker gets ``contextlib.nullcontext()`` (no SQL, no allocation
beyond it).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

from opentelemetry import trace

from cairn import breakers
from cairn.activity import ActivityDefinition, Reschedule, pauses_when_exhausted
from cairn.engine import history as h
from cairn.errors import DatabaseError
from cairn.redaction import redact
from cairn.store import activities as store
from cairn.store import db
from cairn.store.activities import Attempt
from cairn.store.transactions import atomic, connection

log = logging.getLogger("cairn.worker")

DEFAULT_THROTTLE_BUDGET_SECONDS = 600.0  # option throttle_budget's default
RESCHEDULE_JITTER = 0.1  # a reschedule lands 0-10 % after the delay asked for...
# ...and a call refused by an open breaker up to this much later again: such calls all ask for
# the breaker's reopening time, so 10 % of what each has left would bring them back as one
# herd, and against a token-bucket quota most of the herd is answered 429 once more (LLMock
# flagged calls of 11 and 12 requests). Spread, the first one back re-trips the breaker for
# the rest before they send.
BREAKER_SPREAD_SECONDS = 1.0


def breaker_guard(pool: db.Pool | None, definition: ActivityDefinition
                  ) -> AbstractAsyncContextManager[Any]:
    """What an attempt runs inside: nothing for an activity without a breaker, else the
    breaker's admission before the call and the outcome after it."""
    if definition.breaker is None or pool is None:
        return contextlib.nullcontext()
    return _guarded(pool, definition.breaker)


@contextlib.asynccontextmanager
async def _guarded(pool: db.Pool, config: breakers.BreakerConfig) -> AsyncIterator[None]:
    name = config.name or ""
    async with connection(pool) as conn:
        admission = await breakers.admit(conn, name, config)
    trace.get_current_span().set_attributes({"cairn.breaker": name, "cairn.breaker.state": admission.state})
    if not admission.permitted:
        until = admission.retry_at.isoformat() if admission.retry_at else "later"
        raise Reschedule(admission.delay, reason=f"breaker {name} is {admission.state} until {until}",
                         kind="breaker")
    started = time.monotonic()
    outcome: bool | None = None
    try:
        async with breakers.hold_probe(pool, admission, config):
            yield
        outcome = True
    except Reschedule:
        outcome = None  # the call was put off, not made: no outcome
        raise
    except Exception:
        outcome = False
        raise
    finally:
        # CancelledError (a BaseException) leaves outcome None: the probe's lease is freed.
        try:
            async with connection(pool) as conn:
                if outcome is None:
                    await breakers.release(conn, admission)
                else:
                    await breakers.record(conn, name, admission, success=outcome,
                                          duration=time.monotonic() - started)
        except (DatabaseError, OSError) as exc:
            # The call's own outcome matters more than the breaker's bookkeeping; a lost
            # probe lease expires by itself.
            log.warning("breaker %s: outcome not recorded: %s", name, exc)


async def reschedule(pool: db.Pool, row: Attempt, token: int, exc: Reschedule, rng: random.Random,
                     identity: str = "") -> str:
    """Puts an attempt back after ``exc.delay`` without counting it, or fails the activity
    for good when that would exceed its throttle budget or schedule-to-close deadline (past
    the budget, pauses it if its retry policy says so; ``identity``: the worker's, its author).

    Returns ``"rescheduled"``, ``"failed"``, ``"paused"`` or ``"superseded"`` (the attempt's
    token was fenced off meanwhile: nothing written).
    """
    # The rate limiter already hands refused callers distinct, paced times: jitter would
    # only undo its pacing. Other reschedules share a time (a Retry-After): spread them.
    jitter = 0.0 if exc.kind == "rate_limit" else rng.uniform(0, RESCHEDULE_JITTER)
    delay = exc.delay * (1 + jitter) + (rng.uniform(0, BREAKER_SPREAD_SECONDS) if exc.kind == "breaker" else 0.0)
    # Waiting for the fleet's own rate limit is queueing, not the provider throttling us: it
    # does not spend the throttle budget (schedule-to-close still bounds it), or a backlog
    # larger than the limit serves in the budget would fail calls that only had to wait.
    counted = 0.0 if exc.kind == "rate_limit" else delay
    budget = float(row.options.get("throttle_budget") or DEFAULT_THROTTLE_BUDGET_SECONDS)
    async with atomic(pool) as conn:
        state = await store.reschedule_state(conn, run_id=row.run_id, seq=row.seq, token=token)
        if state is None:
            return "superseded"
        throttled, deadline, now = state.throttled_seconds, state.schedule_deadline, state.now
        until = now + timedelta(seconds=delay)
        why = f"{exc.kind}: {redact(exc.reason)}"
        failure: dict[str, Any] | None = None
        if counted and throttled + counted > budget:
            failure = {"type": "ThrottleBudgetExhausted", "retry_state": "throttle_budget_exhausted",
                       "message": f"throttled for {throttled:.1f} s so far; another {delay:.1f} s ({why}) "
                                  f"would exceed the throttle budget of {budget:g} s"}
        elif deadline is not None and until >= deadline:
            failure = {"type": "ScheduleToCloseTimeout", "retry_state": "schedule_to_close_timeout",
                       "message": f"the next try at {until.isoformat()} ({why}) would be past the "
                                  f"schedule-to-close deadline {deadline.isoformat()}"}
        if failure is not None:
            retry_state = failure.pop("retry_state")
            failure.update(details={"throttled_seconds": round(throttled, 3), "delay": round(delay, 3),
                                    "throttle_budget": budget, "kind": exc.kind, "reason": redact(exc.reason)},
                           non_retryable=True)
            if retry_state == "throttle_budget_exhausted" and pauses_when_exhausted(row.options):
                # RetryPolicy(on_exhausted="pause"): held, not failed (the try is not an attempt)
                await store.pause_exhausted(None, run_id=row.run_id, seq=row.seq, token=token, failure=failure,
                                            retry_state=retry_state, note=failure["message"], by=identity,
                                            give_back=1, conn=conn)
                log.warning("activity %s paused: %s", row.activity_type, failure["message"], extra=_extra(row))
                return "paused"
            await store.complete(None, run_id=row.run_id, seq=row.seq, token=token, event_type=h.ACTIVITY_FAILED, data={
                "activity_seq": row.seq, "failure": failure, "attempts": max(state.attempt - 1, 0),
                "retry_state": retry_state}, conn=conn)
            log.info("activity %s failed for good: %s", row.activity_type, failure["message"], extra=_extra(row))
            return "failed"
        await store.reschedule(conn, run_id=row.run_id, seq=row.seq, token=token, delay=delay, counted=counted,
                               failure={
            "type": "Rescheduled", "kind": exc.kind, "reason": redact(exc.reason), "until": until.isoformat(),
            "message": f"throttled until {until.isoformat()} ({why})",
            "details": {"throttled_seconds": round(throttled + counted, 3), "throttle_budget": budget}})
    log.info("activity %s rescheduled in %.2f s (%s)", row.activity_type, delay, why, extra=_extra(row))
    return "rescheduled"


def _extra(row: Attempt) -> dict[str, Any]:
    """The structured fields of a log record about an attempt (as in cairn.worker.activities)."""
    return {"workflow_id": row.workflow_id, "run_id": row.run_id, "activity": row.activity_type,
            "attempt": row.attempt}
