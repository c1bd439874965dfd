"""cairn.testing's time-skipping environment: a workflow's clock jumps to the next moment
something falls due while the test waits on a result, so days of timers, backoffs and
timeouts take seconds; never while an activity attempt runs; activities are mocked by
registering a replacement under their name; without the environment the clock seam adds
nothing (every statement reads the database's clock)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cairn import activity, workflow
from cairn.client import Schedule, ScheduleActionStartWorkflow, ScheduleIntervalSpec, ScheduleSpec
from cairn.errors import WorkflowFailure, WorkflowTimedOutError, WorkflowTimeout
from cairn.options import RetryPolicy
from cairn.store import clock
from cairn.testing import WorkflowEnvironment
from support import events, wait_until


@workflow.defn
async def sleeper(days: int) -> list[str]:
    before = workflow.now()
    await workflow.sleep(timedelta(days=days))
    return [before.isoformat(), workflow.now().isoformat()]


async def test_a_90_day_sleep_finishes_in_seconds_with_workflow_time_90_days_on(db_url, sql):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env:
        async with env.worker(workflows=[sleeper]):
            started = await env.get_current_time()
            handle = await env.client.start(sleeper, 90, id="sleeper")
            before, after = await handle.result(timeout=60)
        elapsed = datetime.fromisoformat(after) - datetime.fromisoformat(before)
        assert elapsed >= timedelta(days=90)
        assert elapsed < timedelta(days=90, minutes=1)  # it jumped to the timer, not past it
        assert await env.get_current_time() - started >= timedelta(days=90)
    # The timer fired at its own moment, recorded in history.
    fired = [d for _, t, d in events(sql, str(handle.run_id)) if t == "TimerStarted"]
    assert len(fired) == 1
    assert clock.active() is False  # the environment handed the database back to its clock


# ---------------------------------------------------------------- a timer raced against a signal


@workflow.defn
async def approval() -> str:
    approved: list[bool] = []
    workflow.set_signal_handler("approve", lambda _payload: approved.append(True))
    try:
        await workflow.wait_condition(lambda: bool(approved), timeout=timedelta(days=30))
    except TimeoutError:
        return "expired"
    return "approved"


async def test_a_signal_beats_a_30_day_timer_and_without_one_the_timer_fires(db_url):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, env.worker(workflows=[approval]):
        t0 = await env.get_current_time()
        # Time does not skip before the test waits: the signal lands first.
        signalled = await env.client.start(approval, id="approved")
        await signalled.signal("approve")
        assert await signalled.result(timeout=60) == "approved"
        assert await env.get_current_time() - t0 < timedelta(days=1)
        # Nobody signals: once the test waits, the 30-day timer is next and fires.
        unsignalled = await env.client.start(approval, id="expired")
        assert await unsignalled.result(timeout=60) == "expired"
        assert await env.get_current_time() - t0 >= timedelta(days=30)


# ---------------------------------------------------------------- a retry backoff of hours


FLAKY_FAILURES = 2


@activity.defn
async def flaky() -> int:
    attempt = activity.info().attempt
    if attempt <= FLAKY_FAILURES:
        raise RuntimeError(f"attempt {attempt} fails")
    return attempt


@workflow.defn
async def patient() -> list[str]:
    before = workflow.now()
    attempt = await workflow.execute_activity(
        flaky, start_to_close_timeout=10,
        retry_policy=RetryPolicy(initial_interval=timedelta(hours=3), backoff_coefficient=2.0, jitter=0.0))
    return [str(attempt), (workflow.now() - before).total_seconds().__repr__()]


async def test_an_activity_retry_backoff_of_hours_is_skipped(db_url):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, \
            env.worker(workflows=[patient], activities=[flaky]):
        handle = await env.client.start(patient, id="patient")
        attempt, waited = await handle.result(timeout=60)
    assert attempt == "3"
    # Backoffs of 3 h, then 6 h: workflow time moved by 9 hours (and a little).
    assert 9 * 3600 <= float(waited) < 9 * 3600 + 600


# ---------------------------------------------------------------- an execution timeout of a year


@workflow.defn
async def endless() -> None:
    await workflow.sleep(timedelta(days=2 * 365))


async def test_an_execution_timeout_of_a_year_is_skipped_to(db_url, sql):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, env.worker(workflows=[endless]):
        t0 = await env.get_current_time()
        handle = await env.client.start(endless, id="endless", execution_timeout=timedelta(days=365))
        with pytest.raises(WorkflowTimedOutError):
            await handle.result(timeout=60)
        skipped = await env.get_current_time() - t0
    assert timedelta(days=365) <= skipped < timedelta(days=366)  # the timeout, not the 2-year timer
    assert [t for _, t, _ in events(sql, str(handle.run_id))][-1] == "WorkflowTimedOut"


# ---------------------------------------------------------------- nothing skips under a running activity


@activity.defn
async def one_second() -> int:
    await asyncio.sleep(1.0)  # real time, under a 2 s start-to-close timeout
    return activity.info().attempt


@workflow.defn
async def brief() -> int:
    return await workflow.execute_activity(one_second, start_to_close_timeout=2)


async def test_time_does_not_skip_while_an_activity_runs(db_url, sql):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, \
            env.worker(workflows=[sleeper, brief], activities=[one_second]):
        t0 = await env.get_current_time()
        pending = await env.client.start(sleeper, 30, id="pending-timer")  # a 30-day timer elsewhere
        handle = await env.client.start(brief, id="brief")
        assert await handle.result(timeout=60) == 1  # the first attempt: it did not time out
        types = [t for _, t, _ in events(sql, str(handle.run_id))]
        assert "ActivityCompleted" in types
        assert "ActivityFailed" not in types
        # The brief run's last workflow task ran before the 30 days passed.
        (closed_at,) = sql("SELECT closed_at FROM cairn.runs WHERE run_id = %s", (str(handle.run_id),))[0]
        assert closed_at - t0 < timedelta(days=1)
        assert await pending.result(timeout=60)  # and then the timer is skipped to


# ---------------------------------------------------------------- manual sleep, auto skipping off


async def test_sleep_moves_the_clock_by_hand_and_auto_skipping_can_be_turned_off(db_url, sql):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, env.worker(workflows=[sleeper]):
        with env.auto_time_skipping_disabled():
            handle = await env.client.start(sleeper, 10, id="ten-days")
            with pytest.raises(WorkflowTimeout):  # it needs 10 days: waiting does not skip now
                await handle.result(timeout=1)
            t0 = await env.get_current_time()
            await env.sleep(timedelta(days=5))
            assert await env.get_current_time() - t0 >= timedelta(days=5)
            assert sql("SELECT status FROM cairn.runs WHERE run_id = %s", (str(handle.run_id),)) == [("running",)]
            await env.sleep(timedelta(days=5))
            before, after = await handle.result(timeout=60)
        assert after > before


# ---------------------------------------------------------------- mocking an activity


@activity.defn
async def compose_greeting(greeting: str, name: str) -> str:
    raise RuntimeError("the real one calls a service the test does not have")


@workflow.defn
async def greeting_workflow(name: str) -> str:
    return await workflow.execute_activity(compose_greeting, "Hello", name, start_to_close_timeout=10,
                                           retry_policy=RetryPolicy(maximum_attempts=1))


@activity.defn(name="compose_greeting")
async def compose_greeting_mocked(greeting: str, name: str) -> str:
    return f"{greeting}, {name} from a mocked activity!"


async def test_an_activity_is_mocked_by_registering_a_replacement_under_its_name(db_url):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env:
        async with env.worker(workflows=[greeting_workflow], activities=[compose_greeting_mocked]):
            result = await (await env.client.start(greeting_workflow, "World", id="mocked")).result(timeout=60)
        assert result == "Hello, World from a mocked activity!"
        async with env.worker(workflows=[greeting_workflow], activities=[compose_greeting]):
            real = await env.client.start(greeting_workflow, "World", id="real")
            with pytest.raises(WorkflowFailure) as failed:  # the real one, for contrast
                await real.result(timeout=60)
        assert failed.value.type == "ActivityError"
        assert "the real one calls a service" in failed.value.message


# ---------------------------------------------------------------- the non-test path


async def test_without_the_environment_the_clock_seam_yields_none(db_url, pg_admin_url):
    assert clock.active() is False
    with psycopg.connect(db_url) as conn:
        assert clock.now(conn) is None  # coalesce(NULL, now()): the database's clock
        assert clock.at(conn, None) is None
    # An environment on another database leaves this one on its own clock.
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env:
        assert clock.active() is True
        with psycopg.connect(db_url) as conn:
            assert clock.now(conn) is not None
        with psycopg.connect(pg_admin_url) as other:
            assert clock.now(other) is None
        await env.sleep(timedelta(days=1))
        with psycopg.connect(db_url) as conn:
            assert clock.now(conn) - datetime.now(UTC) > timedelta(hours=23)
    assert clock.active() is False


# ---------------------------------------------------------------- a daily schedule over days


@workflow.defn
async def daily_report(label: str) -> str:
    started = workflow.now()
    await workflow.sleep(timedelta(hours=2))  # each run has a timer of its own too
    return f"{label} {started.isoformat()}"


async def test_a_daily_schedule_fires_once_per_slot_over_virtual_days(db_url, sql):
    days = 5
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, env.worker(workflows=[daily_report]):
        t0 = await env.get_current_time()
        # Slots at t0 + 12 h + k days (the interval counts from the epoch, shifted by the
        # offset): the 5 days slept hold 5 slots, each run's 2 hours after its slot included.
        noon = timedelta(seconds=(t0 + timedelta(hours=12)).timestamp() % 86_400)
        await env.client.create_schedule("daily", Schedule(
            action=ScheduleActionStartWorkflow(daily_report, "report"),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=1), offset=noon)])))
        await env.sleep(timedelta(days=days))
        assert await env.get_current_time() - t0 >= timedelta(days=days)
        rows = sql("SELECT a.slot, a.status, r.status, a.run_id FROM cairn.schedule_actions a "
                   "JOIN cairn.runs r ON r.run_id = a.run_id WHERE a.schedule_id = 'daily' ORDER BY a.slot")
        # One action per daily slot, each started once and its run finished (its 2-hour
        # timer skipped to as well).
        slots = [r[0] for r in rows]
        assert [round((s - t0) / timedelta(hours=1)) for s in slots] == [12 + 24 * k for k in range(days)]
        assert [(r[1], r[2]) for r in rows] == [("started", "completed")] * days
        # Each run began at its slot's moment in workflow time: the clock stopped there.
        for slot, _, _, run_id in rows:
            (started,) = sql("SELECT created_at FROM cairn.runs WHERE run_id = %s", (str(run_id),))[0]
            assert timedelta(0) <= started - slot < timedelta(minutes=1)
        assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_type = 'daily_report'") == [(days,)]


async def test_time_skips_while_unlocked_for_a_wait_on_something_else(db_url, sql):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, env.worker(workflows=[daily_report]):
        await env.client.create_schedule("unlocked", Schedule(
            action=ScheduleActionStartWorkflow(daily_report, "report"),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=1))])))
        done = ("SELECT count(*) FROM cairn.runs WHERE workflow_type = 'daily_report' AND status = 'completed'")
        with env.time_skipping_unlocked():  # no result to wait on: the test says time may skip
            await wait_until(lambda: sql(done)[0][0] >= 3, timeout=60, what="three daily runs")
    slots = [r[0] for r in sql("SELECT slot FROM cairn.schedule_actions WHERE schedule_id = 'unlocked' "
                               "ORDER BY slot")]
    assert len(slots) >= 3
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(slots))  # none twice, none missed
    assert sql("SELECT count(DISTINCT workflow_id), count(*) FROM cairn.runs "
               "WHERE workflow_type = 'daily_report'") == [(len(slots), len(slots))]
