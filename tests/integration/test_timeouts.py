"""Activity timeouts: start-to-close, schedule-to-close and heartbeat, on a real worker."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import psycopg

from cairn import ActivityError, InputValidationError, RetryPolicy, activity, workflow
from support import events, outcomes_per_activity, wait_until

_attempts: dict[str, list[int]] = {}
_cancelled: dict[str, list[int]] = {}


def _fast(**kw: Any) -> RetryPolicy:
    kw.setdefault("initial_interval", timedelta(seconds=0.1))
    kw.setdefault("jitter", 0.0)
    return RetryPolicy(**kw)


@activity.defn
async def sleeper(tag: str, seconds: float) -> str:
    _attempts.setdefault(tag, []).append(activity.info().attempt)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _cancelled.setdefault(tag, []).append(activity.info().attempt)
        raise
    return "woke up"


@activity.defn
async def stubborn_sleeper(tag: str, seconds: float) -> str:
    """Ignores cancellation: only the database-side reaper can time it out."""
    _attempts.setdefault(tag, []).append(activity.info().attempt)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            await asyncio.sleep(left)
        except asyncio.CancelledError:
            _cancelled.setdefault(tag, []).append(activity.info().attempt)
    return "woke up"


_release = asyncio.Event()  # set by each test at its end: no attempt outlives its test


@activity.defn
async def heartbeater(tag: str, seconds: float, beat_every: float | None) -> str:
    """Heartbeats every ``beat_every`` seconds for ``seconds``; with None, never heartbeats
    and waits (up to ``seconds``) for the test to release it or for cancellation."""
    _attempts.setdefault(tag, []).append(activity.info().attempt)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        if beat_every is None:
            await asyncio.wait_for(_release.wait(), seconds)
            return f"{tag} released"
        while loop.time() < end:
            activity.heartbeat({"t": round(end - loop.time(), 2)})
            await asyncio.sleep(min(beat_every, max(end - loop.time(), 0)))
    except asyncio.CancelledError:
        _cancelled.setdefault(tag, []).append(activity.info().attempt)
        raise
    return f"{tag} done"


def _summary(e: ActivityError) -> dict[str, Any]:
    return {"cause_type": e.cause.type, "attempts": e.attempts, "retry_state": e.retry_state}


@workflow.defn
async def start_to_close_flow(tag: str) -> dict[str, Any]:
    try:
        await workflow.execute_activity(sleeper, tag, 2.0, start_to_close_timeout=0.3,
                                        retry_policy=_fast(maximum_attempts=2))
    except ActivityError as e:
        return _summary(e)
    return {}


@workflow.defn
async def schedule_to_close_flow(tag: str, stubborn: bool, timeout: float) -> dict[str, Any]:
    try:
        # Unlimited attempts: only the schedule-to-close timeout can stop it.
        await workflow.execute_activity(stubborn_sleeper if stubborn else sleeper, tag, 2.0,
                                        schedule_to_close_timeout=timeout, retry_policy=_fast())
    except ActivityError as e:
        return _summary(e)
    return {}


@workflow.defn
async def heartbeat_flow() -> dict[str, Any]:
    """Two activities with a 1 s heartbeat timeout: one goes quiet, one beats every 0.1 s
    for 2 s (twice the heartbeat timeout)."""
    quiet = workflow.start_activity(heartbeater, "quiet", 8.0, None, start_to_close_timeout=10,
                                    heartbeat_timeout=1.0, retry_policy=_fast(maximum_attempts=1))
    chatty = workflow.start_activity(heartbeater, "chatty", 2.0, 0.1, start_to_close_timeout=10,
                                     heartbeat_timeout=1.0, retry_policy=_fast(maximum_attempts=1))
    out: dict[str, Any] = {}
    try:
        out["quiet"] = await quiet
    except ActivityError as e:
        out["quiet"] = _summary(e)
    try:
        out["chatty"] = await chatty
    except ActivityError as e:
        out["chatty"] = _summary(e)
    return out


async def test_start_to_close_timeout_retries_then_fails(client, start_worker, sql):
    await start_worker(workflows=[start_to_close_flow], activities=[sleeper])
    t0 = time.monotonic()
    handle = await client.start(start_to_close_flow, "s2c", id="t-s2c")
    out = await handle.result(timeout=20)
    assert out == {"cause_type": "StartToCloseTimeout", "attempts": 2, "retry_state": "maximum_attempts"}
    assert _attempts["s2c"] == [1, 2]
    assert time.monotonic() - t0 >= 0.6  # two attempts of 0.3 s each
    failed = [d for _, t, d in events(sql, handle.run_id) if t == "ActivityFailed"]
    assert len(failed) == 1
    assert failed[0]["failure"]["type"] == "StartToCloseTimeout"
    assert failed[0]["attempts"] == 2
    assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}


async def test_schedule_to_close_timeout_fails_without_more_retries(client, start_worker, sql):
    """The reaper enforces schedule-to-close on an attempt that does not stop by itself."""
    await start_worker(workflows=[schedule_to_close_flow], activities=[stubborn_sleeper, sleeper])
    handle = await client.start(schedule_to_close_flow, "sch2c", True, 0.6, id="t-sch2c")
    out = await handle.result(timeout=20)
    assert out == {"cause_type": "ScheduleToCloseTimeout", "attempts": 1,
                   "retry_state": "schedule_to_close_timeout"}
    assert _attempts["sch2c"] == [1]
    failed = [d for _, t, d in events(sql, handle.run_id) if t == "ActivityFailed"]
    assert len(failed) == 1
    assert failed[0]["failure"]["type"] == "ScheduleToCloseTimeout"
    assert failed[0]["retry_state"] == "schedule_to_close_timeout"
    assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}
    assert sql("SELECT count(*) FROM cairn.activity_tasks") == [(0,)]


async def test_schedule_to_close_timeout_detected_by_the_attempt_itself(client, start_worker, sql, db_url):
    """The worker bounds a running attempt by the schedule-to-close deadline too. When that
    local limit (not the reaper) ends the attempt, the failure must still say
    ScheduleToCloseTimeout. The test holds the activity row's lock across the deadline so
    the reaper (SKIP LOCKED) cannot get there first: deterministic, not a race."""
    await start_worker(workflows=[schedule_to_close_flow], activities=[stubborn_sleeper, sleeper])
    handle = await client.start(schedule_to_close_flow, "sch2c-local", False, 1.0, id="t-sch2c-local")
    await wait_until(lambda: _attempts.get("sch2c-local"), timeout=10, what="the attempt to start")
    async with await psycopg.AsyncConnection.connect(db_url) as lock:
        await lock.execute("SELECT 1 FROM cairn.activity_tasks WHERE run_id = %s FOR UPDATE",
                           (handle.run_id,))
        await wait_until(lambda: _cancelled.get("sch2c-local"), timeout=10,
                         what="the attempt's own time limit")
        await wait_until(lambda: sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND (query LIKE '%DELETE FROM cairn.activity_tasks%'"
            "  OR query LIKE '%cairn_complete_activities_%')")[0][0],  # the fast path's statements
            timeout=10, what="the worker's outcome write to wait on our lock")
        await lock.commit()
    out = await handle.result(timeout=20)
    assert _attempts["sch2c-local"] == [1]
    assert out == {"cause_type": "ScheduleToCloseTimeout", "attempts": 1,
                   "retry_state": "schedule_to_close_timeout"}


async def test_heartbeat_timeout(client, start_worker, sql):
    _release.clear()
    try:
        await start_worker(workflows=[heartbeat_flow], activities=[heartbeater])
        handle = await client.start(heartbeat_flow, id="t-hb")
        out = await handle.result(timeout=20)
        assert out["quiet"] == {"cause_type": "HeartbeatTimeout", "attempts": 1,
                                "retry_state": "maximum_attempts"}
        assert out["chatty"] == "chatty done"  # survived 2 s with a 1 s heartbeat timeout
        assert _attempts["quiet"] == [1]
        assert _attempts["chatty"] == [1]
        evs = events(sql, handle.run_id)
        failed = [d for _, t, d in evs if t == "ActivityFailed"]
        assert [f["failure"]["type"] for f in failed] == ["HeartbeatTimeout"]
        assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}
        # The timed-out attempt is told to stop (through its worker's lease renewal).
        await wait_until(lambda: _cancelled.get("quiet") == [1], timeout=5, what="quiet attempt cancelled")
    finally:
        _release.set()


@workflow.defn
async def short_heartbeat_flow() -> str:
    try:
        return await workflow.execute_activity(
            heartbeater, "short-hb", 1.2, 0.05, start_to_close_timeout=10,
            heartbeat_timeout=0.3, retry_policy=_fast(maximum_attempts=1))
    except InputValidationError:
        return "rejected"  # refusing a heartbeat timeout the worker cannot honour is fine too
    except ActivityError as e:
        return f"{e.cause.type} after {e.attempts} attempt(s)"


async def test_short_heartbeat_timeout_is_honoured_or_rejected(client, start_worker):
    """An attempt heartbeating every 50 ms must not time out with a 0.3 s heartbeat timeout.
    The worker flushes heartbeats every 0.5 s whatever the timeout, so today every attempt
    with a heartbeat timeout under ~0.5 s fails however often it heartbeats."""
    _release.clear()
    try:
        await start_worker(workflows=[short_heartbeat_flow], activities=[heartbeater])
        handle = await client.start(short_heartbeat_flow, id="t-short-hb")
        assert await handle.result(timeout=20) in ("short-hb done", "rejected")
    finally:
        _release.set()


# ---------------------------------------------------------------- timed-out attempts that are retried


@activity.defn
async def stalls_once(tag: str) -> str:
    """Attempt 1 heartbeats once, then goes quiet until released or cancelled; later attempts
    finish at once."""
    i = activity.info()
    _attempts.setdefault(tag, []).append(i.attempt)
    if i.attempt == 1:
        activity.heartbeat("started")
        try:
            await asyncio.wait_for(_release.wait(), 10)
        except asyncio.CancelledError:
            _cancelled.setdefault(tag, []).append(i.attempt)
            raise
        return "attempt 1 (should have been superseded)"
    return f"attempt {i.attempt}"


@workflow.defn
async def stall_with_sibling_flow(tag: str, retry_after: float, healthy_for: float) -> dict[str, Any]:
    # The stalled attempt times out (1 s without heartbeat) and is retried after
    # ``retry_after``; meanwhile a healthy sibling on the same worker heartbeats every 0.1 s
    # with a 1 s heartbeat timeout and no retries.
    stalled = workflow.start_activity(
        stalls_once, f"{tag}-stalled", start_to_close_timeout=20, heartbeat_timeout=1.0,
        retry_policy=_fast(initial_interval=timedelta(seconds=retry_after), maximum_attempts=3))
    healthy = workflow.start_activity(heartbeater, f"{tag}-healthy", healthy_for, 0.1, start_to_close_timeout=20,
                                      heartbeat_timeout=1.0, retry_policy=_fast(maximum_attempts=1))
    out: dict[str, Any] = {}
    for name, fut in (("stalled", stalled), ("healthy", healthy)):
        try:
            out[name] = await fut
        except ActivityError as e:
            out[name] = _summary(e)
    return out


async def test_retried_heartbeat_timeout_does_not_break_sibling_heartbeats(client, start_worker, caplog):
    """While a heartbeat-timed-out attempt waits for its retry, the stale attempt still runs on
    its worker; its lease renewal must not make the worker's batched heartbeat flush fail
    (and with it the heartbeats of every other attempt of that worker)."""
    _release.clear()
    try:
        await start_worker(workflows=[stall_with_sibling_flow], activities=[stalls_once, heartbeater])
        handle = await client.start(stall_with_sibling_flow, "sib", 3.0, 4.5, id="t-stall-sibling")
        out = await handle.result(timeout=30)
        flush_failures = [r.getMessage() for r in caplog.records if "heartbeat flush failed" in r.getMessage()]
        assert out == {"stalled": "attempt 2", "healthy": "sib-healthy done"}, (out, flush_failures[:1])
        assert flush_failures == []
    finally:
        _release.set()


async def test_retried_heartbeat_timeout_cancels_the_stale_attempt(client, start_worker, sql):
    """A timed-out attempt that is retried (and re-claimed by the same worker) is cancelled,
    not left running next to its successor."""
    _release.clear()
    try:
        await start_worker(workflows=[stall_with_sibling_flow], activities=[stalls_once, heartbeater])
        handle = await client.start(stall_with_sibling_flow, "cxl", 0.1, 0.2, id="t-stall-cancel")
        out = await handle.result(timeout=20)
        assert out == {"stalled": "attempt 2", "healthy": "cxl-healthy done"}
        assert _attempts["cxl-stalled"] == [1, 2]
        await wait_until(lambda: _cancelled.get("cxl-stalled") == [1], timeout=4,
                         what="the timed-out attempt 1 to be cancelled")
        assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}
    finally:
        _release.set()
