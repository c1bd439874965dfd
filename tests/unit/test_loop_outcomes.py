"""How a workflow ends: completed, failed, cancelled, or a task failure that records nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from cairn import ApplicationError, workflow
from cairn.engine import history as h
from cairn.engine import loop as loop_module
from cairn.engine.history import Command, Event
from cairn.engine.instance import failure_of, replay
from cairn.errors import DeterminismViolation, NonDeterminismError, WorkflowTaskFailed

from .harness import Driver, cancel_requested, completed, fired, kinds

T = timedelta(seconds=30)


@workflow.defn
async def returns(value: int) -> dict[str, int]:
    return {"value": value}


def test_returning_records_workflow_completed_with_the_result():
    d = Driver(returns, 5)
    assert d.activate() == [Command(3, h.WORKFLOW_COMPLETED, {"result": {"value": 5}})]
    assert d.instance.closed
    # A closed instance ignores further activations.
    assert d.activate(fired(99), after=1) == []


@workflow.defn
async def raises_value_error(x: int) -> None:
    await asyncio.sleep(1)
    raise ValueError(f"bad input {x}")


def test_value_error_records_workflow_failed_with_type_and_message():
    d = Driver(raises_value_error, 3)
    d.activate()
    (cmd,) = d.activate(fired(3), after=1)
    assert (cmd.seq, cmd.type) == (6, h.WORKFLOW_FAILED)
    failure = cmd.data["failure"]
    assert failure["type"] == "ValueError"
    assert failure["message"] == "bad input 3"
    assert failure["details"] is None
    assert "raise ValueError" in failure["stack"]
    assert d.instance.closed


@workflow.defn
async def raises_application_error() -> None:
    raise ApplicationError("order rejected", type="Rejected", details={"order": 7}, non_retryable=True)


def test_application_error_keeps_its_type_details_and_non_retryable_flag():
    (cmd,) = Driver(raises_application_error).activate()
    failure = cmd.data["failure"]
    assert cmd.type == h.WORKFLOW_FAILED
    assert (failure["type"], failure["message"], failure["details"]) == ("Rejected", "order rejected", {"order": 7})
    assert failure["non_retryable"] is True


@workflow.defn
async def schedules_then_type_error() -> None:
    workflow.start_activity("x", start_to_close_timeout=T)
    len(5)  # type: ignore[arg-type]


@workflow.defn
async def name_error_later() -> None:
    await asyncio.sleep(1)
    return undefined_name  # type: ignore[name-defined]  # noqa: F821


def test_type_error_fails_the_task_and_records_nothing():
    d = Driver(schedules_then_type_error)
    with pytest.raises(WorkflowTaskFailed) as info:
        d.activate()
    assert isinstance(info.value.cause, TypeError)
    assert failure_of(info.value.cause)["type"] == "TypeError"
    assert "has no len()" in failure_of(info.value.cause)["message"]
    assert not d.instance.closed


def test_name_error_after_a_timer_fails_the_task():
    d = Driver(name_error_later)
    assert kinds(d.activate()) == [(3, h.TIMER_STARTED)]
    with pytest.raises(WorkflowTaskFailed) as info:
        d.activate(fired(3), after=1)
    assert isinstance(info.value.cause, NameError)
    assert "undefined_name" in str(info.value)
    assert not d.instance.closed


@workflow.defn
async def sleeps_long() -> str:
    await asyncio.sleep(3600)
    return "woke"


def test_cancel_request_cancels_the_timer_and_records_workflow_cancelled():
    d = Driver(sleeps_long)
    d.activate()
    assert d.activate(cancel_requested("operator"), after=5) == [
        Command(6, h.TIMER_CANCELLED, {"timer_seq": 3}),
        Command(7, h.WORKFLOW_CANCELLED, {}),
    ]
    assert d.instance.closed


def test_cancel_request_before_the_first_activation_cancels_at_once():
    d = Driver(sleeps_long)
    assert d.activate(cancel_requested()) == [Command(4, h.WORKFLOW_CANCELLED, {})]


def test_a_second_cancel_request_is_ignored():
    d = Driver(sleeps_long)
    d.activate()
    cmds = d.activate(cancel_requested("one"), cancel_requested("two"), after=1)
    assert kinds(cmds) == [(7, h.TIMER_CANCELLED), (8, h.WORKFLOW_CANCELLED)]


@workflow.defn
async def swallows_cancel() -> str:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        return "cleaned up"
    return "woke"


def test_workflow_that_catches_cancellation_and_returns_completes():
    d = Driver(swallows_cancel)
    d.activate()
    assert d.activate(cancel_requested(), after=1) == [
        Command(6, h.TIMER_CANCELLED, {"timer_seq": 3}),
        Command(7, h.WORKFLOW_COMPLETED, {"result": "cleaned up"}),
    ]


@workflow.defn
async def cleanup_then_reraise() -> str:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await workflow.execute_activity("cleanup", start_to_close_timeout=T)
        raise
    return "woke"


def test_workflow_may_run_an_activity_while_cancelling_then_is_cancelled():
    d = Driver(cleanup_then_reraise)
    d.activate()
    cmds = d.activate(cancel_requested(), after=1)
    assert kinds(cmds) == [(6, h.TIMER_CANCELLED), (7, h.ACTIVITY_SCHEDULED)]
    assert cmds[1].data["activity_type"] == "cleanup"
    assert d.activate(completed(7, None), after=1) == [Command(10, h.WORKFLOW_CANCELLED, {})]


@workflow.defn
async def bad_args(x: int, y: str) -> None:
    pass


def test_invalid_workflow_input_fails_the_workflow():
    (cmd,) = Driver(bad_args, "nope", "s").activate()
    assert cmd.type == h.WORKFLOW_FAILED
    assert cmd.data["failure"]["type"] == "InputValidationError"
    assert "workflow bad_args: argument 'x' is invalid" in cmd.data["failure"]["message"]
    (cmd,) = Driver(bad_args, 1).activate()
    assert cmd.data["failure"]["message"] == "workflow bad_args takes 2 argument(s), got 1"


@workflow.defn
async def returns_unserialisable() -> object:
    return object()


def test_unserialisable_result_fails_the_workflow():
    (cmd,) = Driver(returns_unserialisable).activate()
    assert cmd.type == h.WORKFLOW_FAILED
    assert cmd.data["failure"]["type"] == "InputValidationError"
    assert "not JSON-serialisable" in cmd.data["failure"]["message"]


@workflow.defn
async def spins() -> None:
    while True:  # noqa: ASYNC110 (the point of the test)
        await asyncio.sleep(0)


def test_busy_loop_fails_the_task(monkeypatch):
    monkeypatch.setattr(loop_module, "MAX_CALLBACKS_PER_ACTIVATION", 500)
    with pytest.raises(WorkflowTaskFailed) as info:
        Driver(spins).activate()
    assert isinstance(info.value.cause, DeterminismViolation)
    assert "spinning" in str(info.value.cause)


@workflow.defn
async def failing_callback() -> None:
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(10)


def test_error_in_a_plain_callback_fails_the_task():
    with pytest.raises(WorkflowTaskFailed) as info:
        Driver(failing_callback).activate()
    assert isinstance(info.value.cause, ZeroDivisionError)


def test_unknown_input_event_type_is_a_non_determinism_error():
    d = Driver(sleeps_long)
    d.activate()
    marker = Event(5, h.WORKFLOW_TASK_STARTED, {"time": 0.0})
    with pytest.raises(NonDeterminismError) as info:
        d.instance.activate(marker, [Event(6, "NoSuchEvent", {})])
    assert (info.value.seq, info.value.expected, info.value.produced) == (6, "an input event", "NoSuchEvent")


def test_activation_must_start_with_a_task_marker():
    d = Driver(sleeps_long)
    with pytest.raises(NonDeterminismError) as info:
        d.instance.activate(Event(2, h.TIMER_FIRED, {"timer_seq": 1}), [])
    assert (info.value.seq, info.value.expected, info.value.produced) == (2, h.WORKFLOW_TASK_STARTED, h.TIMER_FIRED)


def test_dispose_unwinds_a_blocked_instance_without_recording():
    d = Driver(cleanup_then_reraise)
    assert kinds(d.activate()) == [(3, h.TIMER_STARTED)]
    before = list(d.instance._commands)
    # The unwinding code catches CancelledError and tries to schedule "cleanup": refused.
    d.instance.dispose()
    assert d.instance.closed
    assert d.instance.loop.is_closed()
    assert d.instance._commands == before


@workflow.defn
async def gathers_three() -> list[str]:
    return list(await asyncio.gather(*(workflow.execute_activity(n, start_to_close_timeout=T) for n in "abc")))


def test_cancel_request_cancels_every_pending_activity_of_a_gather():
    d = Driver(gathers_three)
    d.activate()
    assert d.activate(cancel_requested("stop"), after=1) == [
        Command(8, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 3}),
        Command(9, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 4}),
        Command(10, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 5}),
        Command(11, h.WORKFLOW_CANCELLED, {}),
    ]
    assert replay(d.definition, d.info, d.history).closed


def test_cancel_request_before_a_result_in_the_same_batch_wins():
    d = Driver(gathers_three)
    d.activate()
    cmds = d.activate(cancel_requested(), completed(3, "A"), after=1)
    assert kinds(cmds) == [(9, h.ACTIVITY_CANCEL_REQUESTED), (10, h.ACTIVITY_CANCEL_REQUESTED),
                           (11, h.ACTIVITY_CANCEL_REQUESTED), (12, h.WORKFLOW_CANCELLED)]


@workflow.defn
async def bug_in_task_group() -> None:
    async def broken() -> int:
        return len(5)  # type: ignore[arg-type]

    async with asyncio.TaskGroup() as tg:
        tg.create_task(workflow.execute_activity("a", start_to_close_timeout=T))
        tg.create_task(broken())


def test_bug_inside_a_task_group_fails_the_task_not_the_workflow():
    """A TypeError is a bug wherever it is raised; a TaskGroup wraps it in an ExceptionGroup."""
    d = Driver(bug_in_task_group)
    with pytest.raises(WorkflowTaskFailed):
        d.activate()
    assert not d.instance.closed
