"""Timers on the deterministic loop: sleep, cancellation, wait_for, asyncio.timeout."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from cairn import workflow
from cairn.engine import history as h
from cairn.engine.history import Command
from cairn.engine.instance import replay

from .harness import T0, Driver, completed, fired, kinds


def timer(seq: int, seconds: float, at=T0) -> Command:
    return Command(seq, h.TIMER_STARTED, {"duration": seconds,
                                          "fire_at": (at + timedelta(seconds=seconds)).isoformat()})


@workflow.defn
async def two_sleeps(first: float) -> str:
    await asyncio.sleep(first)
    await workflow.sleep(timedelta(minutes=2))
    return workflow.now().isoformat()


def test_sleep_starts_a_timer_with_duration_and_fire_at():
    d = Driver(two_sleeps, 30)
    assert d.activate() == [timer(3, 30.0)]
    assert not d.instance.closed


def test_timer_fired_resumes_and_workflow_sleep_takes_a_timedelta():
    d = Driver(two_sleeps, 30)
    d.activate()
    # Nothing happens until the timer's TimerFired arrives, whatever the time.
    assert d.activate(after=3600) == []
    later = T0 + timedelta(seconds=31)
    assert d.activate(fired(3), at=later) == [timer(7, 120.0, at=later)]
    done = T0 + timedelta(seconds=152)
    assert d.activate(fired(7), at=done) == [Command(10, h.WORKFLOW_COMPLETED, {"result": done.isoformat()})]
    assert d.instance.closed
    # The recorded history replays cleanly through a fresh instance.
    assert replay(d.definition, d.info, d.history).closed


def test_fire_at_is_taken_from_the_activation_time_not_the_start_time():
    d = Driver(two_sleeps, 5)
    later = T0 + timedelta(hours=1)
    assert d.activate(at=later) == [timer(3, 5.0, at=later)]


@workflow.defn
async def sleep_zero_then_done() -> str:
    await asyncio.sleep(0)
    await workflow.sleep(0)
    await asyncio.sleep(-1)
    return "done"


def test_non_positive_sleeps_start_no_timer():
    d = Driver(sleep_zero_then_done)
    assert kinds(d.activate()) == [(3, h.WORKFLOW_COMPLETED)]


@workflow.defn
async def cancel_a_sleeper() -> str:
    task = asyncio.create_task(asyncio.sleep(100))
    await asyncio.sleep(0)  # let the task start its timer
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "not cancelled"


def test_cancelling_a_sleeping_task_cancels_its_timer():
    d = Driver(cancel_a_sleeper)
    assert d.activate() == [
        timer(3, 100.0),
        Command(4, h.TIMER_CANCELLED, {"timer_seq": 3}),
        Command(5, h.WORKFLOW_COMPLETED, {"result": "cancelled"}),
    ]


@workflow.defn
async def cancel_sleeper_later() -> str:
    task = asyncio.create_task(asyncio.sleep(100))
    await asyncio.sleep(10)
    task.cancel()
    await asyncio.sleep(10)
    return "ok"


def test_timer_fired_for_a_cancelled_timer_is_ignored():
    d = Driver(cancel_sleeper_later)
    # The main coroutine runs first (its 10 s timer is seq 3), then the task (100 s, seq 4).
    assert d.activate() == [timer(3, 10.0), timer(4, 100.0)]
    # The 10 s timer fires: main starts its next timer, then the cancelled task cancels its own.
    assert d.activate(fired(3), after=10) == [
        timer(7, 10.0, at=T0 + timedelta(seconds=10)),
        Command(8, h.TIMER_CANCELLED, {"timer_seq": 4}),
    ]
    # A TimerFired of the cancelled timer that raced with the cancel changes nothing.
    assert d.activate(fired(4), after=90) == []
    assert d.activate(fired(7), after=1) == [Command(13, h.WORKFLOW_COMPLETED, {"result": "ok"})]
    assert replay(d.definition, d.info, d.history).closed


@workflow.defn
async def wait_for_activity(timeout: float) -> str:
    try:
        return await asyncio.wait_for(
            workflow.execute_activity("slow", start_to_close_timeout=60), timeout=timeout)
    except TimeoutError:
        return f"timed out at {workflow.now().isoformat()}"


def test_wait_for_timer_wins_cancels_the_activity_and_raises_timeout_error():
    d = Driver(wait_for_activity, 5)
    cmds = d.activate()
    assert kinds(cmds) == [(3, h.TIMER_STARTED), (4, h.ACTIVITY_SCHEDULED)]
    assert cmds[0] == timer(3, 5.0)
    assert cmds[1].data["activity_type"] == "slow"
    at = T0 + timedelta(seconds=5)
    assert d.activate(fired(3), at=at) == [
        Command(7, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 4}),
        Command(8, h.WORKFLOW_COMPLETED, {"result": f"timed out at {at.isoformat()}"}),
    ]
    assert replay(d.definition, d.info, d.history).closed


def test_wait_for_activity_wins_cancels_the_timer():
    d = Driver(wait_for_activity, 5)
    d.activate()
    assert d.activate(completed(4, "fast enough"), after=1) == [
        Command(7, h.TIMER_CANCELLED, {"timer_seq": 3}),
        Command(8, h.WORKFLOW_COMPLETED, {"result": "fast enough"}),
    ]


def test_activity_result_after_its_cancel_is_ignored():
    d = Driver(wait_for_activity, 5)
    d.activate()
    d.activate(fired(3), after=5)
    assert d.instance.closed
    assert d.activate(completed(4, "too late"), after=1) == []


@workflow.defn
async def wait_for_uncaught() -> str:
    return await asyncio.wait_for(workflow.execute_activity("slow", start_to_close_timeout=60), 5)


def test_uncaught_wait_for_timeout_fails_the_workflow_with_timeout_error():
    d = Driver(wait_for_uncaught)
    d.activate()
    cmds = d.activate(fired(3), after=5)
    assert kinds(cmds) == [(7, h.ACTIVITY_CANCEL_REQUESTED), (8, h.WORKFLOW_FAILED)]
    assert cmds[1].data["failure"]["type"] == "TimeoutError"


@workflow.defn
async def timeout_block(seconds: float) -> str:
    try:
        async with asyncio.timeout(seconds):
            return await workflow.execute_activity("slow", start_to_close_timeout=60)
    except TimeoutError:
        return "timeout"


def test_asyncio_timeout_starts_a_timer_whose_firing_cancels_the_activity():
    d = Driver(timeout_block, 10)
    cmds = d.activate()
    assert kinds(cmds) == [(3, h.TIMER_STARTED), (4, h.ACTIVITY_SCHEDULED)]
    assert cmds[0].data["duration"] == pytest.approx(10.0, abs=1e-5)
    assert cmds[0].data["fire_at"] == (T0 + timedelta(seconds=10)).isoformat()
    assert d.activate(fired(3), after=10) == [
        Command(7, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 4}),
        Command(8, h.WORKFLOW_COMPLETED, {"result": "timeout"}),
    ]
    assert replay(d.definition, d.info, d.history).closed


def test_asyncio_timeout_not_reached_cancels_its_timer():
    d = Driver(timeout_block, 10)
    d.activate()
    assert d.activate(completed(4, "in time"), after=2) == [
        Command(7, h.TIMER_CANCELLED, {"timer_seq": 3}),
        Command(8, h.WORKFLOW_COMPLETED, {"result": "in time"}),
    ]


@workflow.defn
async def rescheduled_timeout() -> str:
    async with asyncio.timeout(10) as cm:
        cm.reschedule(asyncio.get_running_loop().time() + 20)
        await asyncio.sleep(15)
    return "slept within the extended deadline"


def test_rescheduling_a_timeout_cancels_the_old_timer_and_starts_a_new_one():
    d = Driver(rescheduled_timeout)
    cmds = d.activate()
    assert kinds(cmds) == [(3, h.TIMER_STARTED), (4, h.TIMER_CANCELLED), (5, h.TIMER_STARTED),
                           (6, h.TIMER_STARTED)]
    assert cmds[1].data == {"timer_seq": 3}
    assert cmds[2].data["duration"] == pytest.approx(20.0, abs=1e-5)
    assert cmds[3] == timer(6, 15.0)
    assert d.activate(fired(6), after=15) == [
        Command(9, h.TIMER_CANCELLED, {"timer_seq": 5}),
        Command(10, h.WORKFLOW_COMPLETED, {"result": "slept within the extended deadline"}),
    ]


@workflow.defn
async def loop_time() -> list[float]:
    loop = asyncio.get_running_loop()
    first = loop.time()
    await asyncio.sleep(7)
    return [first, loop.time()]


def test_loop_time_is_workflow_time():
    d = Driver(loop_time)
    d.activate()
    d.activate(fired(3), after=8)
    assert d.result == [T0.timestamp(), (T0 + timedelta(seconds=8)).timestamp()]
