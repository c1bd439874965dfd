"""Activity cancellation types at the instance level: the commands each records, when the
handle resolves, and that their histories replay."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cairn import activity, workflow
from cairn.engine import history as h
from cairn.engine.instance import replay
from cairn.views import summarize

from .harness import Driver, cancel_requested, completed, fired, kinds


@activity.defn
async def work(x: int) -> int:
    return x


@workflow.defn
async def cancel_by_hand(ctype: str) -> dict[str, Any]:
    """Cancels the handle itself once the first timer fires, then awaits it."""
    handle = workflow.start_activity(work, 1, start_to_close_timeout=60, cancellation_type=ctype)  # type: ignore[arg-type]
    await workflow.sleep(1)
    returned = handle.cancel("enough")
    try:
        return {"cancel_returned": returned, "result": await handle}
    except asyncio.CancelledError:
        return {"cancel_returned": returned, "result": "cancelled", "done": handle.done()}


@workflow.defn
async def cancel_by_run_cancel(ctype: str) -> str:
    """Awaits the activity; the run's cancel request cancels it."""
    try:
        return str(await workflow.execute_activity(work, 1, start_to_close_timeout=60,
                                                   cancellation_type=ctype))  # type: ignore[arg-type]
    except asyncio.CancelledError:
        return "cancelled"


@workflow.defn
async def timeout_around(ctype: str) -> str:
    try:
        await asyncio.wait_for(workflow.start_activity(work, 1, start_to_close_timeout=60,
                                                       cancellation_type=ctype), 5)  # type: ignore[arg-type]
    except TimeoutError:
        return "timed out"
    return "finished"


def test_scheduled_data_records_a_non_default_cancellation_type_only():
    for ctype, expected in [("try_cancel", None), ("wait_cancellation_completed", "wait_cancellation_completed"),
                            ("abandon", "abandon")]:
        (sched, _) = Driver(cancel_by_hand, ctype).activate()
        assert sched.data.get("cancellation_type") == expected


def test_try_cancel_resolves_at_once():
    d = Driver(cancel_by_hand, "try_cancel")
    d.activate()
    cmds = d.activate(fired(4), after=1)
    assert [(c.type, c.data) for c in cmds] == [
        (h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 3}),
        (h.WORKFLOW_COMPLETED, {"result": {"cancel_returned": True, "result": "cancelled", "done": True}}),
    ]
    assert replay(d.definition, d.info, d.history).closed


def test_wait_cancellation_completed_resolves_on_activity_cancelled():
    d = Driver(cancel_by_hand, "wait_cancellation_completed")
    d.activate()
    cmds = d.activate(fired(4), after=1)
    assert [(c.type, c.data) for c in cmds] == [
        (h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 3, "cancellation_type": "wait_cancellation_completed"})]
    # Pending until the activity has stopped.
    assert d.activate(fired(99), after=1) == []
    cmds = d.activate((h.ACTIVITY_CANCELLED, {"activity_seq": 3, "attempt": 1, "started": True}), after=1)
    assert kinds(cmds) == [(cmds[0].seq, h.WORKFLOW_COMPLETED)]
    assert d.result == {"cancel_returned": False, "result": "cancelled", "done": True}
    assert replay(d.definition, d.info, d.history).closed


def test_wait_cancellation_completed_gets_the_result_of_an_activity_that_finished_anyway():
    d = Driver(cancel_by_hand, "wait_cancellation_completed")
    d.activate()
    d.activate(fired(4), after=1)
    d.activate(completed(3, 41), after=1)
    assert d.result == {"cancel_returned": False, "result": 41}
    assert replay(d.definition, d.info, d.history).closed


def test_wait_cancellation_completed_under_a_run_cancel_ends_cancelled_even_if_it_finished():
    for outcome in [(h.ACTIVITY_CANCELLED, {"activity_seq": 3, "attempt": 1, "started": True}), completed(3, 7)]:
        d = Driver(cancel_by_run_cancel, "wait_cancellation_completed")
        d.activate()
        cmds = d.activate(cancel_requested("stop"), after=1)
        assert [c.type for c in cmds] == [h.ACTIVITY_CANCEL_REQUESTED]
        d.activate(outcome, after=1)
        assert d.result == "cancelled"
        assert replay(d.definition, d.info, d.history).closed


def test_a_timeout_around_a_wait_cancellation_completed_activity_waits_for_it():
    d = Driver(timeout_around, "wait_cancellation_completed")
    assert [c.type for c in d.activate()] == [h.ACTIVITY_SCHEDULED, h.TIMER_STARTED]
    cmds = d.activate(fired(4), after=5)
    assert [c.type for c in cmds] == [h.ACTIVITY_CANCEL_REQUESTED]
    d.activate((h.ACTIVITY_CANCELLED, {"activity_seq": 3, "attempt": 1, "started": True}), after=1)
    assert d.result == "timed out"
    assert replay(d.definition, d.info, d.history).closed


def test_abandon_resolves_at_once_records_nothing_and_ignores_the_outcome():
    d = Driver(cancel_by_run_cancel, "abandon")
    d.activate()
    cmds = d.activate(cancel_requested("stop"), after=1)
    assert [c.type for c in cmds] == [h.WORKFLOW_COMPLETED]
    assert d.result == "cancelled"
    assert replay(d.definition, d.info, d.history).closed

    @workflow.defn
    async def abandon_then_wait() -> str:
        handle = workflow.start_activity(work, 1, start_to_close_timeout=60, cancellation_type="abandon")
        handle.cancel()
        await workflow.sleep(10)
        return "done"

    d = Driver(abandon_then_wait)
    assert [c.type for c in d.activate()] == [h.ACTIVITY_SCHEDULED, h.TIMER_STARTED]
    assert d.activate(completed(3, 1), after=1) == []  # the abandoned outcome: ignored
    d.activate(fired(4), after=9)
    assert d.result == "done"
    assert replay(d.definition, d.info, d.history).closed


def test_an_unknown_cancellation_type_fails_the_run_clearly():
    d = Driver(cancel_by_hand, "eventually")
    (close,) = d.activate()
    assert close.type == h.WORKFLOW_FAILED
    assert "cancellation_type must be one of try_cancel, wait_cancellation_completed, abandon" in \
        close.data["failure"]["message"]


@pytest.mark.parametrize("event", [
    (h.ACTIVITY_CANCELLED, {"activity_seq": 3, "attempt": 0, "started": False}),
])
def test_history_summary_of_activity_cancelled(event):
    from cairn.engine.history import Event

    assert summarize(Event(9, *event)) == "activity 3 cancelled before it started"
