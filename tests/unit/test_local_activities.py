"""Local activities in the engine: pending requests, markers in the command stream, backoff
timers, and replay from the markers (never running the function again)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from cairn import ActivityError, InputValidationError, RetryPolicy, activity, workflow
from cairn.engine import history as h
from cairn.engine.history import Command, Event
from cairn.engine.instance import replay
from cairn.engine.local import MIN_BACKOFF_SECONDS, LocalOutcome, LocalRequest
from cairn.errors import NonDeterminismError, WorkflowTaskFailed
from cairn.worker.local import LocalRunner
from cairn.worker.wakes import Pools
from cairn.workflow import definition_of

from .harness import Driver, fired, kinds

T = timedelta(seconds=5)


@activity.defn
def say(name: str) -> str:
    return f"hello {name}"


@activity.defn
def shout(name: str) -> str:
    return f"HELLO {name}"


@workflow.defn
async def three_calls(name: str) -> list[str]:
    out = [await workflow.execute_local_activity(say, name, start_to_close_timeout=T)]
    out.append(await workflow.execute_local_activity(say, out[0], start_to_close_timeout=T))
    timer = asyncio.ensure_future(asyncio.sleep(60))
    out.append(await workflow.execute_local_activity("say", "x", start_to_close_timeout=T))
    timer.cancel()
    return out


@workflow.defn
async def parallel(name: str) -> list[str]:
    return list(await asyncio.gather(
        workflow.execute_local_activity(say, name, start_to_close_timeout=T),
        workflow.execute_activity(say, name, start_to_close_timeout=T),
        workflow.execute_local_activity(say, name + "!", start_to_close_timeout=T),
    ))


@workflow.defn(name="three_calls")
async def three_calls_changed(name: str) -> list[str]:
    out = [await workflow.execute_local_activity(say, name, start_to_close_timeout=T)]
    out.append(await workflow.execute_local_activity(shout, out[0], start_to_close_timeout=T))
    return out


@workflow.defn(name="three_calls")
async def three_calls_normal(name: str) -> list[str]:
    return [await workflow.execute_activity(say, name, start_to_close_timeout=T)]


def definition_of_activity(fn: Any) -> activity.ActivityDefinition:
    return fn.__cairn_activity__  # type: ignore[no-any-return]


def run_locals(d: Driver, answer: Callable[[LocalRequest], LocalOutcome], ran: list[LocalRequest] | None = None,
               ) -> list[Command]:
    """What the worker does after an activation: runs the pending local activities (here
    ``answer``), hands their outcomes back, until none is pending; returns the commands."""
    commands: list[Command] = []
    while requests := d.instance.local_requests():
        if ran is not None:
            ran += requests
        cmds = d.instance.resolve_local_activities([answer(r) for r in requests])
        d.history += [c.as_event() for c in cmds]
        commands += cmds
    return commands


def ok(request: LocalRequest) -> LocalOutcome:
    return LocalOutcome(request.local_seq, request.attempt, result=f"hello {request.args[0]}")


def test_a_local_activity_records_nothing_until_the_worker_ran_it():
    d = Driver(three_calls, "ann")
    assert d.activate() == []
    [request] = d.instance.local_requests()
    assert (request.local_seq, request.activity_type, request.args, request.attempt) == (1, "say", ["ann"], 1)
    assert request.options["start_to_close_timeout"] == 5.0
    assert request.options["local_retry_threshold"] == 1.0


def test_markers_are_recorded_in_the_command_stream_and_the_run_completes_in_one_task():
    d = Driver(three_calls, "ann")
    d.activate()
    cmds = run_locals(d, ok)
    assert kinds(cmds) == [(3, h.MARKER_RECORDED), (4, h.MARKER_RECORDED), (5, h.TIMER_STARTED),
                           (6, h.MARKER_RECORDED), (7, h.TIMER_CANCELLED), (8, h.WORKFLOW_COMPLETED)]
    assert cmds[0].data == {"kind": "local_activity", "local_seq": 1, "activity_type": "say", "attempts": 1,
                            "result": "hello ann"}
    assert cmds[-1].data["result"] == ["hello ann", "hello hello ann", "hello x"]


def test_replay_resolves_from_the_markers_without_running_anything():
    d = Driver(three_calls, "ann")
    d.activate()
    run_locals(d, ok)
    inst = replay(d.definition, d.info, d.history)
    assert inst.closed
    assert inst.local_requests() == []


def test_replay_of_jsonb_stored_markers():
    d = Driver(three_calls, "ann")
    d.activate()
    run_locals(d, ok)
    stored = [Event(e.seq, e.type, h.as_stored(e.data)) for e in d.history]
    assert replay(d.definition, d.info, stored).closed


def test_local_and_normal_activities_mix():
    d = Driver(parallel, "bo")
    cmds = d.activate()
    assert kinds(cmds) == [(3, h.ACTIVITY_SCHEDULED)]
    assert [r.local_seq for r in d.instance.local_requests()] == [1, 2]
    cmds = run_locals(d, ok)
    assert kinds(cmds) == [(4, h.MARKER_RECORDED), (5, h.MARKER_RECORDED)]
    assert d.activate((h.ACTIVITY_COMPLETED, {"activity_seq": 3, "result": "hello bo", "attempt": 1}), after=1) \
        == [Command(8, h.WORKFLOW_COMPLETED, {"result": ["hello bo", "hello bo", "hello bo!"]})]
    assert replay(d.definition, d.info, d.history).closed


def test_a_final_failure_raises_activity_error_in_the_workflow_and_replays():
    @workflow.defn(name="fails")
    async def fails() -> str:
        try:
            await workflow.execute_local_activity(say, "z", start_to_close_timeout=T,
                                                  retry_policy=RetryPolicy(maximum_attempts=2))
        except ActivityError as exc:
            return f"{exc.cause.type}: {exc.cause.message} after {exc.attempts} ({exc.retry_state})"
        return "no"

    d = Driver(fails)
    d.activate()
    failure = {"type": "ValueError", "message": "boom", "details": None}
    cmds = run_locals(d, lambda r: LocalOutcome(r.local_seq, 2, failure=failure,
                                                retry_state="maximum_attempts_reached"))
    assert cmds[-1].data["result"] == "ValueError: boom after 2 (maximum_attempts_reached)"
    assert replay(d.definition, d.info, d.history).closed


def test_a_long_backoff_becomes_a_durable_timer_and_the_retry_runs_in_a_later_task():
    d = Driver(three_calls, "ann")
    d.activate()
    failure = {"type": "ValueError", "message": "boom", "details": None}
    cmds = run_locals(d, lambda r: LocalOutcome(r.local_seq, 1, failure=failure, backoff=30.0))
    assert kinds(cmds) == [(3, h.MARKER_RECORDED), (4, h.TIMER_STARTED)]
    assert cmds[0].data["backoff"] == 30.0
    assert d.instance.local_requests() == []  # waiting for the timer
    assert d.activate(fired(4), after=30) == []
    [request] = d.instance.local_requests()
    assert (request.local_seq, request.attempt) == (1, 2)
    assert request.scheduled_at == d.history[1].data["time"]  # the schedule-to-close clock keeps running
    run_locals(d, ok)
    assert d.instance.closed
    inst = replay(d.definition, d.info, d.history)
    assert inst.closed


def test_a_changed_activity_type_is_a_nondeterminism():
    d = Driver(three_calls, "ann")
    d.activate()
    run_locals(d, ok)
    with pytest.raises(NonDeterminismError) as err:
        replay(definition_of(three_calls_changed), d.info, d.history)
    assert (err.value.seq, err.value.expected, err.value.produced) == (
        4, "MarkerRecorded(kind='local_activity', local_seq=2, activity_type='say')",
        "MarkerRecorded(kind='local_activity', local_seq=2, activity_type='shout')")


def test_a_local_activity_the_history_does_not_have_is_a_nondeterminism():
    d = Driver(three_calls_normal, "ann")
    d.activate()
    with pytest.raises(NonDeterminismError) as err:
        replay(definition_of(three_calls), d.info, d.history)
    assert (err.value.seq, err.value.produced) == (
        3, "MarkerRecorded(kind='local_activity', local_seq=1, activity_type='say')")
    assert err.value.expected == "ActivityScheduled(activity_type='say')"


def test_a_marker_the_code_no_longer_asks_for_is_a_nondeterminism():
    d = Driver(three_calls, "ann")
    d.activate()
    run_locals(d, ok)
    with pytest.raises(NonDeterminismError):
        replay(definition_of(three_calls_normal), d.info, d.history)


def test_cancelling_a_pending_local_activity_records_nothing():
    @workflow.defn(name="cancels")
    async def cancels() -> str:
        handle = workflow.start_local_activity(say, "a", start_to_close_timeout=T)
        await asyncio.sleep(0)
        handle.cancel()
        try:
            await handle
        except asyncio.CancelledError:
            return "cancelled"
        return "no"

    d = Driver(cancels)
    assert d.activate() == [Command(3, h.WORKFLOW_COMPLETED, {"result": "cancelled"})]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "set start_to_close_timeout or schedule_to_close_timeout"),
    ({"start_to_close_timeout": 60}, "an attempt may take at most 20 s"),
    ({"schedule_to_close_timeout": 600}, "an attempt may take at most 20 s"),
    ({"start_to_close_timeout": 5, "local_retry_threshold": -1}, "local_retry_threshold must be between"),
    ({"start_to_close_timeout": 5, "local_retry_threshold": 60}, "local_retry_threshold must be between"),
])
def test_bad_options_are_input_validation_errors(kwargs: dict[str, Any], message: str):
    @workflow.defn(name="bad")
    async def bad() -> str:
        try:
            await workflow.execute_local_activity(say, "a", **kwargs)
        except InputValidationError as exc:
            return str(exc)
        return "no"

    d = Driver(bad)
    [cmd] = d.activate()
    assert message in cmd.data["result"]


def test_idempotency_key_of_a_local_activity():
    from datetime import UTC, datetime
    now = datetime.now(UTC)
    info = activity.ActivityInfo("say", "wf", "t", "run", 3, 1, "q", now, now, None, is_local=True)
    assert info.idempotency_key == "wf/run/local/3"


def test_history_tables_summarize_local_activity_markers():
    from cairn.views import summarize
    base = {"kind": "local_activity", "local_seq": 2, "activity_type": "say", "attempts": 3}
    failure = {"type": "ValueError", "message": "boom"}
    assert summarize(Event(5, h.MARKER_RECORDED, {**base, "result": "hi"})) == \
        'local activity 2 say -> "hi" (attempts 3)'
    assert summarize(Event(5, h.MARKER_RECORDED, {**base, "failure": failure, "retry_state": "x"})) == \
        "local activity 2 say failed: ValueError: boom (attempts 3)"
    assert summarize(Event(5, h.MARKER_RECORDED, {**base, "failure": failure, "backoff": 4.0})) == \
        "local activity 2 say attempt 3 failed: ValueError: boom; retry in 4 s"
    assert summarize(Event(5, h.MARKER_RECORDED, {**base, "failure": None, "backoff": 0.001})) == \
        "local activity 2 say put off to a later task (the task's time for local activities ran out)"


def test_a_patch_marker_no_call_asks_for_any_more_is_stepped_over():
    @workflow.defn(name="patched_then_local")
    async def patched_then_local() -> str:
        workflow.patched("old-change")
        return str(await workflow.execute_local_activity(say, "p", start_to_close_timeout=T))

    @workflow.defn(name="patched_then_local")
    async def patch_removed() -> str:
        return str(await workflow.execute_local_activity(say, "p", start_to_close_timeout=T))

    d = Driver(patched_then_local)
    d.activate()
    run_locals(d, ok)
    assert [e.data.get("kind") for e in d.history if e.type == h.MARKER_RECORDED] == ["patch", "local_activity"]
    assert replay(definition_of(patch_removed), d.info, d.history).closed


async def test_the_runner_puts_requests_off_once_the_batch_budget_is_spent():
    ran: list[str] = []

    @activity.defn(name="say")
    def say_and_count(name: str) -> str:
        ran.append(name)
        return f"hello {name}"

    d = Driver(three_calls, "ann")
    d.activate()
    runner = LocalRunner({"say": definition_of_activity(say_and_count)}, "w", Pools())
    now = time.monotonic()
    [late] = await runner.run(d.instance, now=d.now.timestamp(), began=now, deadline=now - 1)
    assert (late.local_seq, late.attempts, late.backoff, late.failure) == (1, 0, MIN_BACKOFF_SECONDS, None)
    assert ran == []
    [done] = await runner.run(d.instance, now=d.now.timestamp(), began=now, deadline=now + 5)
    assert (done.result, done.attempts) == ("hello ann", 1)
    assert ran == ["ann"]
    # A later task puts it off the same way: a backoff marker, a timer, the same attempt next.
    cmds = run_locals(d, lambda r: late)
    assert kinds(cmds) == [(3, h.MARKER_RECORDED), (4, h.TIMER_STARTED)]
    d.activate(fired(4), after=1)
    assert d.instance.local_requests()[0].attempt == 1


async def test_the_runner_fails_the_task_for_an_unregistered_activity():
    d = Driver(three_calls, "ann")
    d.activate()
    with pytest.raises(WorkflowTaskFailed, match="'say' is not registered on this worker"):
        await LocalRunner({}, "w", Pools()).run(d.instance, now=0.0, began=0.0, deadline=time.monotonic() + 5)
