"""The instance side of the run lifecycle: the commands that child workflows and
continue-as-new produce, how child handles resolve, and replay of such histories."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cairn import ChildWorkflowError, InputValidationError, workflow
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.errors import NonDeterminismError

from .harness import OTHER_RUN_ID, Driver, cancel_requested, kinds


def child_started(seq: int, workflow_id: str, run_id: str = OTHER_RUN_ID) -> tuple[str, dict[str, Any]]:
    return h.CHILD_WORKFLOW_STARTED, {"child_seq": seq, "workflow_id": workflow_id, "run_id": run_id}


def child_completed(seq: int, result: Any) -> tuple[str, dict[str, Any]]:
    return h.CHILD_WORKFLOW_COMPLETED, {"child_seq": seq, "workflow_id": "x", "run_id": OTHER_RUN_ID,
                                        "status": "completed", "result": result}


def child_failed(seq: int, type: str, message: str, status: str = "failed") -> tuple[str, dict[str, Any]]:
    return h.CHILD_WORKFLOW_FAILED, {"child_seq": seq, "workflow_id": "x", "run_id": OTHER_RUN_ID,
                                     "status": status, "failure": {"type": type, "message": message,
                                                                   "details": None}}


@workflow.defn
async def kid(x: int) -> int:
    return x * 2


@workflow.defn
async def parent(x: int) -> int:
    handle = await workflow.start_child_workflow(kid, x, parent_close_policy="abandon", execution_timeout=30)
    return int(await handle) + 1


@workflow.defn
async def parent_reports(x: int) -> dict[str, Any]:
    try:
        await workflow.execute_child_workflow("kid", x, id="the-kid", queue="kids")
    except ChildWorkflowError as exc:
        return {"type": exc.cause.type, "message": exc.cause.message, "status": exc.status, "seq": exc.seq,
                "run_id": exc.run_id}
    return {}


@workflow.defn
async def parent_gives_up() -> str:
    handle = await workflow.start_child_workflow(kid, 1)
    handle.cancel()
    try:
        await handle
    except asyncio.CancelledError:
        return "child cancelled"
    return "unreachable"


@workflow.defn
async def looper(n: int) -> int:
    try:
        await workflow.sleep(1)
        if n < 5:
            workflow.continue_as_new(n + 1)
    except Exception:  # a ContinueAsNewError is not an Exception: it passes through
        return -1
    return n


@workflow.defn
async def measures() -> list[int]:
    lengths = [workflow.info().history_length]
    await workflow.sleep(1)
    lengths.append(workflow.info().history_length)
    return lengths


def test_child_commands_and_result():
    d = Driver(parent, 5)
    commands = d.activate()
    assert kinds(commands) == [(3, h.CHILD_WORKFLOW_SCHEDULED)]
    assert commands[0].data == {
        "workflow_type": "kid", "workflow_id": "wf-1/3", "input": [5], "queue": "default",
        "parent_close_policy": "abandon", "id_reuse_policy": "allow_duplicate", "execution_timeout": 30.0,
    }
    assert d.activate(child_started(3, "wf-1/3")) == []
    commands = d.activate(child_completed(3, 10))
    assert kinds(commands) == [(8, h.WORKFLOW_COMPLETED)]
    assert d.result == 11


def test_child_failure_raises_child_workflow_error():
    d = Driver(parent_reports, 1)
    assert d.activate()[0].data["workflow_id"] == "the-kid"
    d.activate(child_started(3, "the-kid"))
    d.activate(child_failed(3, "WorkflowTimedOut", "too slow", status="timed_out"))
    assert d.result == {"type": "WorkflowTimedOut", "message": "too slow", "status": "timed_out", "seq": 3,
                        "run_id": OTHER_RUN_ID}


def test_child_start_failure_raises_from_start():
    d = Driver(parent_reports, 1)
    d.activate()
    d.activate((h.CHILD_WORKFLOW_START_FAILED, {
        "child_seq": 3, "workflow_id": "the-kid",
        "failure": {"type": "WorkflowAlreadyStarted", "message": "already running", "details": None}}))
    assert d.result == {"type": "WorkflowAlreadyStarted", "message": "already running", "status": "not_started",
                        "seq": 3, "run_id": None}


def test_cancelling_a_child_handle_records_a_cancel_request():
    d = Driver(parent_gives_up)
    d.activate()
    commands = d.activate(child_started(3, "wf-1/3"))
    assert kinds(commands) == [(6, h.CHILD_WORKFLOW_CANCEL_REQUESTED), (7, h.WORKFLOW_COMPLETED)]
    assert commands[0].data == {"child_seq": 3}
    assert d.result == "child cancelled"


def test_parent_cancelled_while_awaiting_child_cancels_it():
    d = Driver(parent, 1)
    d.activate()
    d.activate(child_started(3, "wf-1/3"))
    commands = d.activate(cancel_requested("stop"))
    assert kinds(commands) == [(8, h.CHILD_WORKFLOW_CANCEL_REQUESTED), (9, h.WORKFLOW_CANCELLED)]
    # A late outcome of the child changes nothing.
    assert d.activate(child_completed(3, 2)) == []


def test_bad_child_options_fail_in_the_code():
    @workflow.defn
    async def bad_policy() -> None:
        await workflow.start_child_workflow(kid, 1, parent_close_policy="sometimes")  # type: ignore[arg-type]

    @workflow.defn
    async def bad_args() -> None:
        await workflow.start_child_workflow(kid, "not a number")

    for fn, fragment in ((bad_policy, "parent_close_policy"), (bad_args, "kid")):
        commands = Driver(fn).activate()
        assert kinds(commands) == [(3, h.WORKFLOW_FAILED)]
        assert commands[0].data["failure"]["type"] == InputValidationError.__name__
        assert fragment in commands[0].data["failure"]["message"]


def test_continue_as_new_command():
    d = Driver(looper, 4)
    d.activate()
    commands = d.activate((h.TIMER_FIRED, {"timer_seq": 3}), after=1)
    assert kinds(commands) == [(6, h.WORKFLOW_CONTINUED_AS_NEW)]
    assert commands[0].data == {"workflow_type": "looper", "input": [5], "queue": "default"}
    assert d.instance.closed
    last = Driver(looper, 5)
    last.activate()
    last.activate((h.TIMER_FIRED, {"timer_seq": 3}), after=1)
    assert last.result == 5


def test_continue_as_new_validates_its_arguments():
    @workflow.defn
    async def wrong(n: int) -> None:
        workflow.continue_as_new("nope")

    commands = Driver(wrong, 1).activate()
    assert kinds(commands) == [(3, h.WORKFLOW_FAILED)]
    assert commands[0].data["failure"]["type"] == "InputValidationError"


def test_info_history_length_grows():
    d = Driver(measures)
    d.activate()
    d.activate((h.TIMER_FIRED, {"timer_seq": 3}), after=1)
    # marker 2 at the first activation; after TimerStarted 3, marker 4 and TimerFired 5.
    assert d.result == [2, 5]


def test_replay_of_child_and_continue_as_new_histories():
    d = Driver(parent, 5)
    d.activate()
    d.activate(child_started(3, "wf-1/3"))
    d.activate(child_completed(3, 10))
    assert replay(d.definition, d.info, d.history).closed

    loop = Driver(looper, 4)
    loop.activate()
    loop.activate((h.TIMER_FIRED, {"timer_seq": 3}), after=1)
    assert replay(loop.definition, loop.info, loop.history).closed

    # A changed child type is a divergence at the child's seq.
    changed = [Event(e.seq, e.type, {**e.data, "workflow_type": "other"}) if e.type == h.CHILD_WORKFLOW_SCHEDULED
               else e for e in d.history]
    with pytest.raises(NonDeterminismError) as info:
        replay(d.definition, d.info, changed)
    assert info.value.seq == 3


def test_replay_stops_at_a_timeout():
    d = Driver(measures)
    d.activate()
    history = [*d.history, Event(d.last_seq + 1, h.WORKFLOW_TIMED_OUT, {"failure": {"type": "WorkflowTimedOut"}})]
    instance = replay(d.definition, d.info, history)
    assert not instance.closed  # nothing ran after the timeout


def test_replay_takes_the_chain_link_from_workflow_started():
    """A continued run's default child ids include its run id; replay (the worker's and
    ``cairn replay``'s) reads ``continued_from`` from the recorded ``WorkflowStarted``."""
    from .harness import RUN_ID, T0, make_info

    def history(child_id: str) -> list[Event]:
        return [
            Event(1, h.WORKFLOW_STARTED, {"workflow_type": "parent", "input": [5], "queue": "default",
                                          "workflow_id": "wf-1", "continued_from": OTHER_RUN_ID}),
            Event(2, h.WORKFLOW_TASK_STARTED, {"time": T0.timestamp(), "worker": "t"}),
            Event(3, h.CHILD_WORKFLOW_SCHEDULED, {"workflow_type": "kid", "workflow_id": child_id, "input": [5]}),
        ]

    d = Driver(parent, 5)
    instance = replay(d.definition, make_info("parent"), history(f"wf-1/{RUN_ID}/3"))
    assert instance.info.continued_from == OTHER_RUN_ID
    with pytest.raises(NonDeterminismError):
        replay(d.definition, make_info("parent"), history("wf-1/3"))
