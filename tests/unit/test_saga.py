"""Sagas on the deterministic loop: compensation order, options, pre-registration,
cancellation, the recorded markers and their replay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import changed_workflows
import golden_workflows
import pytest
from pydantic import BaseModel

from cairn import CairnError, InputValidationError, RetryPolicy, workflow
from cairn.engine import history as h
from cairn.engine.history import Command, Event
from cairn.engine.instance import WorkflowInstance, replay
from cairn.errors import NonDeterminismError, WorkflowTaskFailed
from cairn.saga import COMPENSATION_START_TO_CLOSE
from cairn.views import describe_sagas, summarize
from cairn.workflow import WorkflowInfo, definition_of
from support import HISTORIES

from .harness import T0, Driver, cancel_requested, completed, failed, fired, kinds

T = 30


class Spec(BaseModel):
    n: int = 3
    parallel: bool = False
    continue_on_error: bool = True
    pre_register: bool = False


@workflow.defn
async def booking(spec: Spec) -> list[Any]:
    done = []
    async with workflow.saga(parallel_compensation=spec.parallel, continue_on_error=spec.continue_on_error) as saga:
        for i in range(1, spec.n + 1):
            if spec.pre_register:
                saga.compensate("undo", i)
            done.append(await workflow.execute_activity("do", i, start_to_close_timeout=T))
            if not spec.pre_register:
                saga.compensate("undo", i)
    return done


Respond = Callable[[Command], tuple[str, dict[str, Any]]]


def respond_with(fail_step: int = 0, fail_undo: frozenset[int] = frozenset()) -> Respond:
    """Answers each scheduled activity: `do i` completes unless i == fail_step; `undo i`
    completes unless i is in fail_undo. Failures are non-retryable."""

    def respond(c: Command) -> tuple[str, dict[str, Any]]:
        kind, (i,) = c.data["activity_type"], c.data["input"]
        if (kind == "do" and i == fail_step) or (kind == "undo" and i in fail_undo):
            return failed(c.seq, "Refused", f"{kind} {i} refused", retry_state="non_retryable", non_retryable=True)
        return completed(c.seq, f"{kind}-{i}")

    return respond


def answer(d: Driver, respond: Respond, commands: list[Command]) -> None:
    """Activates until nothing new is scheduled, answering the activities the previous
    activation scheduled in the next batch (all of a batch's activities together)."""
    while scheduled := [c for c in commands if c.type == h.ACTIVITY_SCHEDULED]:
        commands = d.activate(*(respond(c) for c in scheduled), after=1)


def drive(d: Driver, respond: Respond) -> None:
    """Runs a fresh workflow to its end, answering every activity with ``respond``."""
    answer(d, respond, d.activate())


def scheduled_calls(d: Driver) -> list[str]:
    return [f"{e.data['activity_type']}-{e.data['input'][0]}" for e in d.history if e.type == h.ACTIVITY_SCHEDULED]


def compensations(d: Driver) -> list[str]:
    return [c for c in scheduled_calls(d) if c.startswith("undo")]


def markers(d: Driver) -> list[tuple[int, str]]:
    return [(e.seq, e.data["event"]) for e in d.history if e.type == h.MARKER_RECORDED]


def last(d: Driver) -> Event:
    return d.history[-1]


def failure(d: Driver) -> dict[str, Any]:
    assert last(d).type == h.WORKFLOW_FAILED, last(d)
    return dict(last(d).data["failure"])


def replays(d: Driver) -> None:
    inst = replay(d.definition, d.info, d.history)
    assert inst.closed


# -- the forward path


def test_a_saga_that_succeeds_records_started_and_completed_and_compensates_nothing():
    d = Driver(booking, Spec().model_dump())
    drive(d, respond_with())
    assert d.result == ["do-1", "do-2", "do-3"]
    assert markers(d) == [(3, "started"), (13, "completed")]
    assert compensations(d) == []
    started = d.history[2].data
    assert started == {"kind": "saga", "event": "started", "parallel_compensation": False,
                       "continue_on_error": True}
    # Forward steps carry the saga's id; the marker's seq is that id.
    assert [e.data.get("saga") for e in d.history if e.type == h.ACTIVITY_SCHEDULED] == [3, 3, 3]
    replays(d)


def test_activities_outside_the_saga_are_not_tagged():
    @workflow.defn
    async def around() -> None:
        await workflow.execute_activity("before", start_to_close_timeout=T)
        async with workflow.saga():
            await workflow.execute_activity("inside", start_to_close_timeout=T)
        await workflow.execute_activity("after", start_to_close_timeout=T)

    d = Driver(around)
    drive(d, lambda c: completed(c.seq))
    tags = {e.data["activity_type"]: e.data.get("saga") for e in d.history if e.type == h.ACTIVITY_SCHEDULED}
    assert tags == {"before": None, "inside": 6, "after": None}


# -- compensation order


@pytest.mark.parametrize("fail_step", [1, 2, 3])
def test_compensations_run_in_reverse_order_for_completed_steps(fail_step):
    d = Driver(booking, Spec().model_dump())
    drive(d, respond_with(fail_step))
    assert compensations(d) == [f"undo-{i}" for i in range(fail_step - 1, 0, -1)]
    f = failure(d)
    assert f["type"] == "ActivityError"
    assert f["message"] == f"activity do (seq {3 + 3 * fail_step - 2}) failed: Refused: do {fail_step} refused"
    saga = f["sagas"][0]
    assert saga["saga"] == 3
    assert saga["status"] == "compensated"
    assert [(c["activity_type"], c["status"]) for c in saga["compensations"]] == [("undo", "completed")] * (
        fail_step - 1)
    assert [e for _, e in markers(d)] == ["started", "compensation_started", "compensation_ended"]
    replays(d)


def test_sequential_compensation_commands_and_seqs_exactly():
    d = Driver(booking, Spec().model_dump())
    drive(d, respond_with(fail_step=3))
    assert [(e.seq, e.type) for e in d.history[11:]] == [
        (12, h.ACTIVITY_FAILED), (13, h.MARKER_RECORDED), (14, h.ACTIVITY_SCHEDULED),
        (15, h.WORKFLOW_TASK_STARTED), (16, h.ACTIVITY_COMPLETED), (17, h.ACTIVITY_SCHEDULED),
        (18, h.WORKFLOW_TASK_STARTED), (19, h.ACTIVITY_COMPLETED), (20, h.MARKER_RECORDED), (21, h.WORKFLOW_FAILED),
    ]
    started = d.history[12].data
    reason = {"type": "ActivityError", "message": "activity do (seq 10) failed: Refused: do 3 refused"}
    assert started == {"kind": "saga", "event": "compensation_started", "saga": 3, "reason": reason,
                       "compensations": ["undo", "undo"]}
    assert d.history[13].data["saga"] == 3
    assert d.history[13].data["compensation"] == 0
    assert d.history[16].data["compensation"] == 1
    ended = d.history[19].data
    assert ended == {"kind": "saga", "event": "compensation_ended", "saga": 3, "status": "compensated",
                     "compensations": [{"activity_type": "undo", "seq": 14, "status": "completed"},
                                       {"activity_type": "undo", "seq": 17, "status": "completed"}]}


def test_compensations_get_long_retries_and_a_default_timeout_or_their_own_options():
    policy = RetryPolicy(maximum_attempts=7)

    @workflow.defn
    async def options() -> None:
        async with workflow.saga() as saga:
            saga.compensate("undo_default")
            saga.compensate("undo_custom", 1, start_to_close_timeout=timedelta(seconds=9), retry_policy=policy,
                            queue="undo-q", heartbeat_timeout=3)
            raise RuntimeError("boom")

    d = Driver(options)
    cmds = d.activate()  # sequential: the newest compensation is scheduled first, alone
    assert [c.data["activity_type"] for c in cmds if c.type == h.ACTIVITY_SCHEDULED] == ["undo_custom"]
    cmds += d.activate(completed(5), after=1)
    custom, default = (c.data for c in cmds if c.type == h.ACTIVITY_SCHEDULED)
    assert default["activity_type"] == "undo_default"
    assert default["options"]["start_to_close_timeout"] == COMPENSATION_START_TO_CLOSE.total_seconds() == 300
    assert default["options"]["retry_policy"]["maximum_attempts"] == 0  # unlimited
    assert default["queue"] == "default"
    assert custom["options"]["start_to_close_timeout"] == 9
    assert custom["options"]["heartbeat_timeout"] == 3
    assert custom["options"]["retry_policy"]["maximum_attempts"] == 7
    assert custom["queue"] == "undo-q"
    assert custom["input"] == [1]


def test_a_saga_with_nothing_registered_records_an_empty_compensation():
    @workflow.defn
    async def nothing() -> None:
        async with workflow.saga():
            raise ValueError("early")

    d = Driver(nothing)
    d.activate()
    assert markers(d) == [(3, "started"), (4, "compensation_started"), (5, "compensation_ended")]
    f = failure(d)
    assert (f["type"], f["message"]) == ("ValueError", "early")
    assert f["sagas"] == [{"saga": 3, "status": "compensated", "compensations": []}]


class BookingFailed(Exception):
    pass


@workflow.defn
async def rewrapping(catch: bool) -> str:
    try:
        async with workflow.saga() as saga:
            await workflow.execute_activity("do", 1, start_to_close_timeout=T)
            saga.compensate("undo", 1)
            await workflow.execute_activity("do", 2, start_to_close_timeout=T)
    except Exception as err:
        if catch:
            return "handled"
        raise BookingFailed("could not book") from err
    return "booked"


def test_a_failure_raised_from_the_saga_error_still_reports_the_compensations():
    d = Driver(rewrapping, False)
    drive(d, respond_with(fail_step=2))
    f = failure(d)
    assert (f["type"], f["message"]) == ("BookingFailed", "could not book")
    assert [s["status"] for s in f["sagas"]] == ["compensated"]


def test_a_handled_saga_error_does_not_leak_into_a_later_outcome():
    d = Driver(rewrapping, True)
    drive(d, respond_with(fail_step=2))
    assert d.result == "handled"
    assert compensations(d) == ["undo-1"]


# -- options


def test_parallel_compensation_starts_every_compensation_at_once():
    d = Driver(booking, Spec(n=4, parallel=True).model_dump())
    commands = d.activate()
    for seq in (4, 7, 10):
        commands = d.activate(completed(seq, "ok"), after=1)
    commands = d.activate(failed(13, "Refused", "no", non_retryable=True), after=1)
    assert kinds(commands) == [(16, h.MARKER_RECORDED), (17, h.ACTIVITY_SCHEDULED), (18, h.ACTIVITY_SCHEDULED),
                               (19, h.ACTIVITY_SCHEDULED)]
    assert [c.data["input"] for c in commands[1:]] == [[3], [2], [1]]
    # Outcomes out of order; the saga ends only when all are in.
    assert d.activate(completed(18), after=1) == []
    assert d.activate(completed(19), after=1) == []
    commands = d.activate(completed(17), after=1)
    assert kinds(commands) == [(26, h.MARKER_RECORDED), (27, h.WORKFLOW_FAILED)]
    assert commands[0].data["status"] == "compensated"
    assert [c["seq"] for c in commands[0].data["compensations"]] == [17, 18, 19]
    replays(d)


@pytest.mark.parametrize("parallel", [False, True])
def test_continue_on_error_runs_every_compensation_and_reports_every_failure(parallel):
    d = Driver(booking, Spec(n=4, parallel=parallel, continue_on_error=True).model_dump())
    drive(d, respond_with(fail_step=4, fail_undo=frozenset({3, 1})))
    assert compensations(d) == ["undo-3", "undo-2", "undo-1"]
    saga = failure(d)["sagas"][0]
    assert saga["status"] == "compensation_failed"
    assert [(c["status"], c.get("failure", {}).get("cause")) for c in saga["compensations"]] == [
        ("failed", {"type": "Refused", "message": "undo 3 refused"}),
        ("completed", None),
        ("failed", {"type": "Refused", "message": "undo 1 refused"}),
    ]
    # The original error is still the run's failure.
    assert failure(d)["message"].endswith("do 4 refused")
    replays(d)


def test_stop_at_the_first_failing_compensation():
    d = Driver(booking, Spec(n=4, continue_on_error=False).model_dump())
    drive(d, respond_with(fail_step=4, fail_undo=frozenset({2})))
    assert compensations(d) == ["undo-3", "undo-2"]  # undo-1 never scheduled
    saga = failure(d)["sagas"][0]
    assert [(c["seq"], c["status"]) for c in saga["compensations"]] == [(17, "completed"), (20, "failed"),
                                                                       (None, "skipped")]
    assert saga["status"] == "compensation_failed"
    assert saga["compensations"][1]["failure"]["type"] == "ActivityError"
    replays(d)


def test_in_parallel_mode_stop_at_first_still_runs_all_started_compensations():
    d = Driver(booking, Spec(n=3, parallel=True, continue_on_error=False).model_dump())
    drive(d, respond_with(fail_step=3, fail_undo=frozenset({2})))
    assert compensations(d) == ["undo-2", "undo-1"]
    assert [c["status"] for c in failure(d)["sagas"][0]["compensations"]] == ["failed", "completed"]


# -- pre-registration


@pytest.mark.parametrize("fail_step", [1, 2, 3])
def test_a_compensation_registered_before_its_step_runs_when_that_step_fails(fail_step):
    d = Driver(booking, Spec(pre_register=True).model_dump())
    drive(d, respond_with(fail_step))
    assert compensations(d) == [f"undo-{i}" for i in range(fail_step, 0, -1)]
    replays(d)


# -- cancellation


def test_cancel_while_a_step_runs_compensates_completed_steps_then_ends_cancelled():
    d = Driver(booking, Spec().model_dump())
    d.activate()
    d.activate(completed(4, "r1"), after=1)  # step 2 (seq 7) is running
    commands = d.activate(cancel_requested("user"), after=1)
    assert kinds(commands) == [(10, h.ACTIVITY_CANCEL_REQUESTED), (11, h.MARKER_RECORDED), (12, h.ACTIVITY_SCHEDULED)]
    assert commands[0].data == {"activity_seq": 7}
    assert commands[1].data["reason"] == {"type": "CancelledError", "message": "user"}
    assert commands[2].data["input"] == [1]
    # A second cancel request is not delivered again: the compensation is not interrupted.
    assert d.activate(cancel_requested("again"), after=1) == []
    commands = d.activate(completed(12, "undone"), after=1)
    assert kinds(commands) == [(17, h.MARKER_RECORDED), (18, h.WORKFLOW_CANCELLED)]
    assert commands[0].data["status"] == "compensated"
    replays(d)


def test_cancel_with_a_pre_registered_step_compensates_the_interrupted_step_too():
    d = Driver(booking, Spec(pre_register=True).model_dump())
    d.activate()
    d.activate(completed(4, "r1"), after=1)
    answer(d, respond_with(), d.activate(cancel_requested(), after=1))
    assert compensations(d) == ["undo-2", "undo-1"]
    assert last(d).type == h.WORKFLOW_CANCELLED
    replays(d)


def test_cancel_request_during_compensation_waits_for_it_then_cancels_the_run():
    d = Driver(booking, Spec().model_dump())
    d.activate()
    d.activate(completed(4), after=1)
    d.activate(failed(7, "Refused", "no", non_retryable=True), after=1)  # compensates undo-1 at seq 11
    assert compensations(d) == ["undo-1"]
    assert d.activate(cancel_requested(), after=1) == []  # no ActivityCancelRequested for undo-1
    commands = d.activate(completed(11), after=1)
    assert kinds(commands) == [(16, h.MARKER_RECORDED), (17, h.WORKFLOW_CANCELLED)]
    replays(d)


@workflow.defn
async def booking_with_deadline() -> str:
    try:
        async with asyncio.timeout(60), workflow.saga() as saga:
            await workflow.execute_activity("do", 1, start_to_close_timeout=T)
            saga.compensate("undo", 1)
            await workflow.execute_activity("do", 2, start_to_close_timeout=T)
    except TimeoutError:
        return "timed out and compensated"
    return "done"


def test_a_timeout_around_the_saga_compensates_then_raises_timeout_error():
    d = Driver(booking_with_deadline)
    assert kinds(d.activate()) == [(3, h.TIMER_STARTED), (4, h.MARKER_RECORDED), (5, h.ACTIVITY_SCHEDULED)]
    d.activate(completed(5), after=1)
    commands = d.activate(fired(3), after=60)
    assert kinds(commands) == [(11, h.ACTIVITY_CANCEL_REQUESTED), (12, h.MARKER_RECORDED), (13, h.ACTIVITY_SCHEDULED)]
    assert commands[1].data["reason"]["type"] == "CancelledError"
    d.activate(completed(13), after=1)
    assert d.result == "timed out and compensated"
    replays(d)


# -- nesting, bugs, misuse


@workflow.defn
async def nested() -> None:
    async with workflow.saga() as outer:
        await workflow.execute_activity("do", 1, start_to_close_timeout=T)
        outer.compensate("undo", 1)
        async with workflow.saga() as inner:
            await workflow.execute_activity("do", 2, start_to_close_timeout=T)
            inner.compensate("undo", 2)
            await workflow.execute_activity("do", 3, start_to_close_timeout=T)


def test_nested_sagas_compensate_inner_then_outer_and_report_both():
    d = Driver(nested)
    drive(d, respond_with(fail_step=3))
    assert compensations(d) == ["undo-2", "undo-1"]
    assert [s["saga"] for s in failure(d)["sagas"]] == [7, 3]
    views = describe_sagas(d.history)
    assert [(v["id"], [s["seq"] for s in v["steps"]], [c["seq"] for c in v["compensations"]]) for v in views] == [
        (3, [4], [20]), (7, [8, 11], [15])]
    replays(d)


@workflow.defn
async def buggy() -> None:
    async with workflow.saga() as saga:
        await workflow.execute_activity("do", 1, start_to_close_timeout=T)
        saga.compensate("undo", 1)
        len(5)  # type: ignore[arg-type]


def test_a_bug_inside_the_saga_fails_the_task_without_compensating():
    d = Driver(buggy)
    d.activate()
    marker = Event(d.last_seq + 1, h.WORKFLOW_TASK_STARTED, {"time": d.now.timestamp(), "worker": "t"})
    with pytest.raises(WorkflowTaskFailed) as info:
        d.instance.activate(marker, [Event(marker.seq + 1, *completed(4))])
    assert isinstance(info.value.cause, TypeError)
    assert d.instance._commands == []


def test_compensate_outside_the_block_and_entering_twice_are_refused():
    @workflow.defn
    async def misuse() -> list[str]:
        out = []
        saga = workflow.saga()
        try:
            saga.compensate("undo")
        except CairnError as err:
            out.append(str(err))
        async with saga:
            pass
        try:
            saga.compensate("undo")
        except CairnError as err:
            out.append(str(err))
        try:
            async with saga:
                pass
        except CairnError as err:
            out.append(str(err))
        return out

    d = Driver(misuse)
    d.activate()
    assert d.result == ["saga.compensate() works only inside the saga's `async with` block"] * 2 + [
        "a saga can be entered only once"]


def test_a_bad_compensation_is_refused_when_registered():
    @workflow.defn
    async def bad() -> str:
        async with workflow.saga() as saga:
            try:
                saga.compensate(print)
            except InputValidationError as err:
                return str(err)
        return "accepted"

    d = Driver(bad)
    d.activate()
    assert "is not an activity" in d.result


def test_an_evicted_instance_mid_compensation_unwinds_quietly():
    d = Driver(booking, Spec().model_dump())
    d.activate()
    d.activate(completed(4), after=1)
    d.activate(failed(7, "Refused", "no", non_retryable=True), after=1)
    d.instance.dispose()
    assert d.instance.loop.is_closed()


def test_saga_outside_a_workflow_is_refused():
    async def outside() -> None:
        async with workflow.saga():
            pass

    with pytest.raises(CairnError, match="only inside workflow code"):
        asyncio.run(outside())


# -- describe


def test_describe_sagas_shows_steps_and_compensations_as_they_progress():
    d = Driver(booking, Spec(n=4, continue_on_error=False).model_dump())
    d.activate()
    d.activate(completed(4), after=1)
    (view,) = describe_sagas(d.history)
    assert view["status"] == "running"
    assert [(s["activity_type"], s["status"]) for s in view["steps"]] == [("do", "completed"), ("do", "scheduled")]
    d.activate(completed(7), after=1)
    d.activate(failed(10, "Refused", "no", attempts=2, non_retryable=True), after=1)
    (view,) = describe_sagas(d.history)
    assert view["status"] == "compensating"
    assert view["reason"]["type"] == "ActivityError"
    assert [(c["seq"], c["status"]) for c in view["compensations"]] == [(14, "scheduled"), (None, "pending")]
    d.activate(failed(14, "Refused", "undo 2 refused", non_retryable=True), after=1)
    (view,) = describe_sagas(d.history)
    assert view == {
        "id": 3, "status": "compensation_failed", "parallel_compensation": False, "continue_on_error": False,
        "reason": view["reason"],
        "steps": [{"seq": 4, "activity_type": "do", "status": "completed", "attempts": 1},
                  {"seq": 7, "activity_type": "do", "status": "completed", "attempts": 1},
                  {"seq": 10, "activity_type": "do", "status": "failed", "attempts": 2,
                   "failure": {"type": "Refused", "message": "no"}}],
        "compensations": [{"seq": 14, "activity_type": "undo", "status": "failed", "attempts": 1,
                           "failure": {"type": "Refused", "message": "undo 2 refused"}},
                          {"seq": None, "activity_type": "undo", "status": "skipped"}],
    }


def test_describe_sagas_marks_a_cancelled_step():
    d = Driver(booking, Spec().model_dump())
    d.activate()
    d.activate(cancel_requested(), after=1)
    (view,) = describe_sagas(d.history)
    assert view["steps"] == [{"seq": 4, "activity_type": "do", "status": "cancelled"}]
    assert view["status"] == "compensated"


def test_history_summaries_name_the_saga():
    d = Driver(booking, Spec().model_dump())
    drive(d, respond_with(fail_step=2))
    lines = [summarize(e) for e in d.history if e.type in (h.MARKER_RECORDED, h.ACTIVITY_SCHEDULED)]
    assert lines == ["saga 3 started", "do on default (saga 3 step)", "do on default (saga 3 step)",
                     "saga 3 compensation_started: undo", "undo on default (saga 3 compensation)",
                     "saga 3 compensation_ended: compensated"]


# -- replay


def test_marker_commands_match_on_kind_and_event():
    cmd = Command(3, h.MARKER_RECORDED, {"kind": "saga", "event": "started", "parallel_compensation": False})
    assert cmd.matches(Event(3, h.MARKER_RECORDED, {"kind": "saga", "event": "started"}))
    assert not cmd.matches(Event(3, h.MARKER_RECORDED, {"kind": "saga", "event": "completed"}))
    assert not cmd.matches(Event(3, h.MARKER_RECORDED, {"kind": "other", "event": "started"}))
    assert cmd.describe() == "MarkerRecorded(kind='saga', event='started')"
    assert h.MARKER_RECORDED in h.COMMAND_EVENTS


def test_replay_reproduces_every_saga_command_exactly():
    """Batch by batch, a fresh instance produces the recorded commands, data included."""
    d = Driver(booking, Spec(n=4, continue_on_error=False).model_dump())
    drive(d, respond_with(fail_step=4, fail_undo=frozenset({2})))
    inst = WorkflowInstance(d.definition, d.info, d.history[0].data["input"])
    markers_at = [i for i, e in enumerate(d.history) if e.type == h.WORKFLOW_TASK_STARTED]
    for start, end in zip(markers_at, [*markers_at[1:], len(d.history)], strict=True):
        batch = d.history[start:end]
        inputs = [e for e in batch[1:] if e.type in h.INPUT_EVENTS]
        recorded = [e for e in batch[1:] if e.type in h.COMMAND_EVENTS]
        produced = inst.activate(batch[0], inputs)
        assert [(c.seq, c.type, strip(c.data)) for c in produced] == \
               [(e.seq, e.type, strip(e.data)) for e in recorded], f"batch at seq {batch[0].seq}"
    assert inst.closed


def strip(data: Any) -> Any:
    """Command data without the stack traces, the failure's and its causes' (their line
    numbers and paths differ between instances)."""
    if isinstance(data, dict):
        return {k: strip(v) for k, v in data.items() if k != "stack"}
    return data


@workflow.defn(name="booking")
async def booking_without_saga(spec: Spec) -> list[Any]:
    return [await workflow.execute_activity("do", i, start_to_close_timeout=T) for i in range(1, spec.n + 1)]


@workflow.defn(name="booking")
async def booking_other_compensation(spec: Spec) -> list[Any]:
    """Registers a different compensation activity."""
    done = []
    async with workflow.saga() as saga:
        for i in range(1, spec.n + 1):
            done.append(await workflow.execute_activity("do", i, start_to_close_timeout=T))
            saga.compensate("undo_other", i)
    return done


@workflow.defn(name="booking")
async def booking_swallowing(spec: Spec) -> list[Any]:
    """Catches the failure inside the saga: nothing compensates."""
    async with workflow.saga():
        try:
            for i in range(1, spec.n + 1):
                await workflow.execute_activity("do", i, start_to_close_timeout=T)
        except Exception:
            return []
    return []


@pytest.mark.parametrize(("fn", "expected"), [
    pytest.param(booking_without_saga, (3, "MarkerRecorded(kind='saga', event='started')",
                                        "ActivityScheduled(activity_type='do')"), id="saga-removed"),
    pytest.param(booking_other_compensation, (14, "ActivityScheduled(activity_type='undo')",
                                                 "ActivityScheduled(activity_type='undo_other')"),
                 id="other-compensation"),
    pytest.param(booking_swallowing, (13, "MarkerRecorded(kind='saga', event='compensation_started')",
                                      "MarkerRecorded(kind='saga', event='completed')"), id="no-compensation"),
])
def test_a_changed_saga_raises_non_determinism_error(fn, expected):
    d = Driver(booking, Spec().model_dump())
    drive(d, respond_with(fail_step=3))
    with pytest.raises(NonDeterminismError) as info:
        replay(definition_of(fn), d.info, d.history)
    assert (info.value.seq, info.value.expected, info.value.produced) == expected


# -- the golden history of a compensated saga (tests/histories/saga_compensated.json)


SAGA_GOLDEN = HISTORIES / "saga_compensated.json"


def golden() -> tuple[dict[str, Any], list[Event], WorkflowInfo]:
    data = json.loads(SAGA_GOLDEN.read_text())
    events = [Event.from_json(e) for e in data["events"]]
    info = WorkflowInfo(workflow_id=data["workflow_id"], run_id=data["run_id"], workflow_type=data["workflow_type"],
                        queue=data["queue"], namespace="default", start_time=events[0].at or T0)
    return data, events, info


def test_the_saga_golden_history_is_a_compensated_saga():
    data, events, _ = golden()
    assert data["status"] == "failed"
    assert [(e.seq, e.type) for e in events if e.type in h.COMMAND_EVENTS] == [
        (3, h.MARKER_RECORDED), (4, h.ACTIVITY_SCHEDULED), (7, h.ACTIVITY_SCHEDULED), (10, h.ACTIVITY_SCHEDULED),
        (13, h.MARKER_RECORDED), (14, h.ACTIVITY_SCHEDULED), (17, h.ACTIVITY_SCHEDULED), (20, h.ACTIVITY_SCHEDULED),
        (23, h.MARKER_RECORDED), (24, h.WORKFLOW_FAILED)]
    undo = [e.data["input"][0] for e in events if e.type == h.ACTIVITY_SCHEDULED and "compensation" in e.data]
    assert undo == ["lisbon flight", "lisbon hotel booked", "lisbon car booked"]
    (view,) = describe_sagas(events)
    assert view["status"] == "compensated"
    assert [s["status"] for s in view["steps"]] == ["completed", "completed", "failed"]
    assert events[-1].data["failure"]["sagas"][0]["status"] == "compensated"


def test_the_saga_golden_history_replays_command_for_command():
    _, events, info = golden()
    assert replay(definition_of(golden_workflows.golden_saga), info, events).closed
    inst = WorkflowInstance(definition_of(golden_workflows.golden_saga), info, events[0].data["input"])
    markers_at = [i for i, e in enumerate(events) if e.type == h.WORKFLOW_TASK_STARTED]
    for start, end in zip(markers_at, [*markers_at[1:], len(events)], strict=True):
        batch = events[start:end]
        produced = inst.activate(batch[0], [e for e in batch[1:] if e.type in h.INPUT_EVENTS])
        assert [(c.seq, c.type, strip(c.data)) for c in produced] == \
               [(e.seq, e.type, strip(e.data)) for e in batch[1:] if e.type in h.COMMAND_EVENTS]


def test_a_changed_golden_saga_diverges():
    _, events, info = golden()
    with pytest.raises(NonDeterminismError) as err:
        replay(definition_of(changed_workflows.golden_saga_parallel), info, events)
    assert (err.value.seq, err.value.expected, err.value.produced) == (
        15, None, "ActivityScheduled(activity_type='cancel')")


def cairn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("cairn")), *args], cwd=HISTORIES,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_replays_the_saga_golden_history():
    data, _, _ = golden()
    out = cairn("replay", SAGA_GOLDEN.name, "-m", "golden_workflows")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == f"OK: 24 events of {data['workflow_id']} replay with the current code"
    out = cairn("replay", SAGA_GOLDEN.name, "-m", "changed_workflows")
    assert out.returncode == 1
    assert out.stdout.strip() == ("DIVERGED: non-deterministic workflow at seq 15: history has no command, "
                                  "the code produced ActivityScheduled(activity_type='cancel')")
