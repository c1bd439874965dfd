"""activity.Reschedule: an attempt put back without being counted, bounded by the throttle
budget and schedule-to-close; @activity.defn(breaker=...) end to end with a workflow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cairn import ActivityError, InputValidationError, activity, breakers, workflow
from cairn.activity import validate_call
from cairn.breakers import BreakerConfig
from support import events, wait_until

_calls: dict[str, list[int]] = {}


@activity.defn
async def throttled(tag: str, times: int, delay: float) -> dict[str, int]:
    """Reschedules itself ``times`` times (a 429 with Retry-After ``delay``), then succeeds."""
    seen = _calls.setdefault(tag, [])
    seen.append(activity.info().attempt)
    if len(seen) <= times:
        raise activity.Reschedule(delay, reason=f"429 from the fake provider ({len(seen)})")
    return {"attempt": activity.info().attempt, "calls": len(seen)}


@workflow.defn
async def call_throttled(tag: str, times: int, delay: float, budget: float, schedule_to_close: float | None) -> dict:
    try:
        return await workflow.execute_activity(
            throttled, tag, times, delay, start_to_close_timeout=10, schedule_to_close_timeout=schedule_to_close,
            throttle_budget=budget)
    except ActivityError as e:
        return {"error": e.cause.type, "message": e.cause.message, "retry_state": e.retry_state,
                "attempts": e.attempts, "details": e.cause.details}


async def test_reschedule_does_not_burn_attempts(client, start_worker, sql):
    await start_worker(workflows=[call_throttled], activities=[throttled])
    handle = await client.start(call_throttled, "ok", 3, 0.05, 60.0, None, id="resched-ok")
    out = await handle.result(timeout=30)
    assert out == {"attempt": 1, "calls": 4}
    assert _calls["ok"] == [1, 1, 1, 1], "every try ran as attempt 1"
    completed = [d for _, t, d in events(sql, handle.run_id) if t == "ActivityCompleted"]
    assert [d["attempt"] for d in completed] == [1]
    assert not [t for _, t, _ in events(sql, handle.run_id) if t == "ActivityFailed"]


async def test_describe_shows_throttled_until(client, start_worker, sql):
    await start_worker(workflows=[call_throttled], activities=[throttled])
    handle = await client.start(call_throttled, "slow", 1, 30.0, 600.0, None, id="resched-describe")

    async def rescheduled():
        d = await handle.describe()
        acts = d.pending_activities
        return acts and acts[0]["last_failure"] and acts[0]

    act = await wait_until(rescheduled, what="the activity to be rescheduled")
    assert act["attempt"] == 1, "the attempt that runs once the throttle ends (was shown as 0)"
    assert act["lease_owner"] is None
    assert act["last_failure"]["message"].startswith("throttled until ")
    assert act["last_failure"]["kind"] == "throttle"
    assert "429 from the fake provider" in act["last_failure"]["message"]
    (throttled_s, wait), = sql("SELECT throttled_seconds, extract(epoch FROM available_at - now()) "
                               "FROM cairn.activity_tasks")
    assert 30.0 <= throttled_s <= 33.0 + 1e-9, "the delay plus at most 10 % jitter"
    assert 25 < wait <= 33


async def test_throttle_budget_exhaustion_fails_clearly(client, start_worker, sql):
    await start_worker(workflows=[call_throttled], activities=[throttled])
    handle = await client.start(call_throttled, "budget", 1000, 0.2, 0.5, None, id="resched-budget")
    out = await handle.result(timeout=30)
    assert out["error"] == "ThrottleBudgetExhausted"
    assert out["retry_state"] == "throttle_budget_exhausted"
    assert "would exceed the throttle budget of 0.5 s" in out["message"]
    assert out["details"]["throttle_budget"] == 0.5
    assert out["details"]["throttled_seconds"] + out["details"]["delay"] > 0.5
    assert out["attempts"] == 0, "no attempt was burned"
    assert 2 <= len(_calls["budget"]) <= 4  # 0.2-0.22 s each: two or three fit in 0.5 s


@activity.defn
async def queued(tag: str, times: int, delay: float) -> dict[str, int]:
    """Waits ``times`` times for the fleet's own rate limit, then succeeds."""
    seen = _calls.setdefault(tag, [])
    seen.append(activity.info().attempt)
    if len(seen) <= times:
        raise activity.Reschedule(delay, reason="at its limit of 60 requests/min", kind="rate_limit")
    return {"attempt": activity.info().attempt, "calls": len(seen)}


@workflow.defn
async def call_queued(tag: str, times: int, delay: float, budget: float) -> dict:
    return await workflow.execute_activity(queued, tag, times, delay, start_to_close_timeout=10,
                                           throttle_budget=budget)


async def test_waiting_for_the_fleets_rate_limit_spends_no_throttle_budget(client, start_worker, sql):
    """Queueing behind our own limiter is not the provider throttling us: a backlog larger
    than the limit serves within the budget must wait, not fail."""
    await start_worker(workflows=[call_queued], activities=[queued])
    handle = await client.start(call_queued, "queued", 6, 0.2, 0.5, id="resched-queued")
    assert await handle.result(timeout=30) == {"attempt": 1, "calls": 7}, "1.2 s of waits on a 0.5 s budget"
    assert sql("SELECT count(*) FROM cairn.activity_tasks") == [(0,)]


async def test_schedule_to_close_bounds_reschedules(client, start_worker):
    await start_worker(workflows=[call_throttled], activities=[throttled])
    handle = await client.start(call_throttled, "deadline", 1000, 5.0, 600.0, 2.0, id="resched-deadline")
    out = await handle.result(timeout=30)
    assert out["error"] == "ScheduleToCloseTimeout"
    assert out["retry_state"] == "schedule_to_close_timeout"
    assert "past the schedule-to-close deadline" in out["message"]
    assert _calls["deadline"] == [1]


def test_throttle_budget_is_validated():
    for bad in (0, -1, float("nan"), float("inf"), "10", True):
        with pytest.raises(InputValidationError, match="throttle_budget"):
            validate_call(throttled, ("t", 1, 1.0), start_to_close_timeout=1, schedule_to_close_timeout=None,
                             heartbeat_timeout=None, retry_policy=None, queue=None, throttle_budget=bad)
    call = validate_call(throttled, ("t", 1, 1.0), start_to_close_timeout=1, schedule_to_close_timeout=None,
                            heartbeat_timeout=None, retry_policy=None, queue=None,
                            throttle_budget=timedelta(minutes=2))
    assert call.options["throttle_budget"] == 120.0
    call = validate_call(throttled, ("t", 1, 1.0), start_to_close_timeout=1, schedule_to_close_timeout=None,
                            heartbeat_timeout=None, retry_policy=None, queue=None)
    assert "throttle_budget" not in call.options, "histories without it are unchanged"


def test_reschedule_kind_is_checked():
    with pytest.raises(ValueError, match="kind"):
        activity.Reschedule(1, reason="x", kind="other")
    assert activity.Reschedule(-5, reason="x").delay == 0.0


# ---------------------------------------------------------------- @activity.defn(breaker=...)

PAYMENTS = BreakerConfig(name="payments", minimum_calls=2, failure_rate_threshold=50, recovery_timeout=1.0,
                         permitted_calls_in_half_open=1)
_charges: list[str] = []


@activity.defn(breaker=PAYMENTS)
async def charge(order: str) -> str:
    _charges.append(order)
    return f"charged {order}"


@workflow.defn
async def pay(order: str) -> str:
    return await workflow.execute_activity(charge, order, start_to_close_timeout=10, throttle_budget=60)


async def test_breaker_activity_is_rescheduled_while_open_then_completes(client, start_worker, sql, db_url):
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await breakers.admit(conn, "payments", PAYMENTS)
        await breakers.force_open(conn, "payments", until=datetime.now(UTC) + timedelta(seconds=2))
    await start_worker(workflows=[pay], activities=[charge])
    handle = await client.start(pay, "o-1", id="pay-1")

    async def refused():
        rows = sql("SELECT last_failure FROM cairn.activity_tasks")
        return rows and rows[0][0] and rows[0][0]["kind"] == "breaker" and rows[0][0]

    failure = await wait_until(refused, what="the activity to be refused by the open breaker")
    assert "breaker payments is open until" in failure["message"]
    assert _charges == [], "no call is made while the breaker is open"
    assert await handle.result(timeout=30) == "charged o-1"
    assert _charges == ["o-1"]
    completed = [d for _, t, d in events(sql, handle.run_id) if t == "ActivityCompleted"]
    assert [d["attempt"] for d in completed] == [1]
    state, successful, not_permitted = sql(
        "SELECT state, successful, not_permitted FROM cairn.breakers WHERE name = 'payments'")[0]
    assert (state, successful) == ("closed", 1), "the half-open probe succeeded and closed it"
    assert not_permitted >= 1
    assert [t for t, in sql("SELECT to_state FROM cairn.breaker_events WHERE name = 'payments' ORDER BY id")] \
        == ["open", "half_open", "closed"]


def test_breaker_option_is_checked():
    from cairn.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="name"):
        activity.defn(breaker=BreakerConfig())
    with pytest.raises(ConfigurationError, match="empty"):
        activity.defn(breaker=" ")
