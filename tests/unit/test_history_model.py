"""The history model (events, commands, matching) and workflow definitions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cairn import InputValidationError, workflow
from cairn.engine import history as h
from cairn.engine.history import Command, Event
from cairn.engine.instance import failure_of
from cairn.errors import ApplicationError, NonDeterminismError
from cairn.workflow import definition_of


def test_event_json_round_trip():
    at = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    e = Event(7, h.TIMER_FIRED, {"timer_seq": 5}, at)
    raw = e.to_json()
    assert raw == {"seq": 7, "type": h.TIMER_FIRED, "data": {"timer_seq": 5}, "at": at.isoformat()}
    assert Event.from_json(raw) == e
    assert Event.from_json({"seq": "3", "type": h.TIMER_FIRED, "data": None}) == Event(3, h.TIMER_FIRED, {}, None)
    assert "at" not in Event(1, h.WORKFLOW_STARTED).to_json()


def test_command_matches_on_seq_type_and_identity_keys_only():
    cmd = Command(3, h.ACTIVITY_SCHEDULED, {"activity_type": "a", "input": [1]})
    assert cmd.matches(Event(3, h.ACTIVITY_SCHEDULED, {"activity_type": "a", "input": [2]}))
    assert not cmd.matches(Event(3, h.ACTIVITY_SCHEDULED, {"activity_type": "b", "input": [1]}))
    assert not cmd.matches(Event(4, h.ACTIVITY_SCHEDULED, {"activity_type": "a"}))
    assert not cmd.matches(Event(3, h.TIMER_STARTED, {"activity_type": "a"}))
    assert Command(5, h.TIMER_CANCELLED, {"timer_seq": 3}).matches(Event(5, h.TIMER_CANCELLED, {"timer_seq": 3}))
    assert not Command(5, h.TIMER_CANCELLED, {"timer_seq": 3}).matches(Event(5, h.TIMER_CANCELLED, {"timer_seq": 4}))
    assert not Command(6, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 3}).matches(
        Event(6, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 4}))
    assert Command(8, h.TIMER_STARTED, {"duration": 1}).matches(Event(8, h.TIMER_STARTED, {"duration": 2}))


def test_describe_names_the_identity():
    assert Command(3, h.ACTIVITY_SCHEDULED, {"activity_type": "a"}).describe() == \
        "ActivityScheduled(activity_type='a')"
    assert Command(4, h.TIMER_CANCELLED, {"timer_seq": 3}).describe() == "TimerCancelled(timer_seq=3)"
    assert Command(5, h.TIMER_STARTED, {"duration": 1}).describe() == "TimerStarted"
    assert h.describe_event(Event(6, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 3})) == \
        "ActivityCancelRequested(activity_seq=3)"
    assert Command(3, h.WORKFLOW_COMPLETED, {"result": 1}).as_event() == Event(3, h.WORKFLOW_COMPLETED, {"result": 1})


def test_event_type_sets_are_disjoint():
    assert not h.INPUT_EVENTS & h.COMMAND_EVENTS
    assert set(h.TERMINAL_EVENTS) - h.CLOSED_WITHOUT_CODE <= h.COMMAND_EVENTS


def test_non_determinism_error_carries_its_fields():
    err = NonDeterminismError(9, None, "TimerStarted")
    assert (err.seq, err.expected, err.produced) == (9, None, "TimerStarted")
    assert str(err) == "non-deterministic workflow at seq 9: history has no command, the code produced TimerStarted"
    assert failure_of(err)["details"] == {"seq": 9, "expected": None, "produced": "TimerStarted"}


def test_failure_of_application_error():
    out = failure_of(ApplicationError("m", type="T", details=[1], non_retryable=True))
    assert {k: out[k] for k in ("type", "message", "details", "non_retryable")} == {
        "type": "T", "message": "m", "details": [1], "non_retryable": True}
    assert "non_retryable" not in failure_of(ApplicationError("m"))


def test_defn_names_and_rejects_non_async_functions():
    @workflow.defn(name="custom-name")
    async def wf() -> None:
        pass

    assert definition_of(wf).name == "custom-name"
    assert definition_of(wf).fn is wf

    with pytest.raises(TypeError, match="needs an async def"):
        @workflow.defn
        def not_async() -> None:
            pass

    with pytest.raises(InputValidationError, match="is not a workflow"):
        definition_of(print)
