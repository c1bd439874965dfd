"""workflow.patched / workflow.deprecate_patch: live, on replay of old and new histories,
memoized, and the tolerance of a recorded patch marker that no call asks for."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cairn import activity, workflow
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.errors import CairnError, InputValidationError, NonDeterminismError
from cairn.views import summarize

from .harness import Driver, completed

T = timedelta(seconds=10)


@activity.defn
async def old_step(x: int) -> str:
    return f"old {x}"


@activity.defn
async def new_step(x: int) -> str:
    return f"new {x}"


@workflow.defn(name="versioned")
async def versioned_v1(x: int) -> list[str]:
    first = await workflow.execute_activity(old_step, x, start_to_close_timeout=T)
    second = await workflow.execute_activity(old_step, x + 1, start_to_close_timeout=T)
    return [first, second]


@workflow.defn(name="versioned")
async def versioned_v2(x: int) -> list[str]:
    first = await workflow.execute_activity(old_step, x, start_to_close_timeout=T)
    if workflow.patched("use-new-step"):
        second = await workflow.execute_activity(new_step, x + 1, start_to_close_timeout=T)
    else:
        second = await workflow.execute_activity(old_step, x + 1, start_to_close_timeout=T)
    # Asked again: the same answer, and no second marker.
    return [first, second, str(workflow.patched("use-new-step"))]


@workflow.defn(name="versioned")
async def versioned_v3(x: int) -> list[str]:
    """Every old run has finished: the old branch is gone."""
    first = await workflow.execute_activity(old_step, x, start_to_close_timeout=T)
    workflow.deprecate_patch("use-new-step")
    second = await workflow.execute_activity(new_step, x + 1, start_to_close_timeout=T)
    return [first, second, "True"]


@workflow.defn(name="versioned")
async def versioned_v4(x: int) -> list[str]:
    """The deprecate_patch call removed too."""
    first = await workflow.execute_activity(old_step, x, start_to_close_timeout=T)
    second = await workflow.execute_activity(new_step, x + 1, start_to_close_timeout=T)
    return [first, second, "True"]


@workflow.defn(name="versioned")
async def versioned_unguarded(x: int) -> list[str]:
    """The change made without patched(): breaks runs recorded by v1."""
    first = await workflow.execute_activity(old_step, x, start_to_close_timeout=T)
    second = await workflow.execute_activity(new_step, x + 1, start_to_close_timeout=T)
    return [first, second]


def run_to_end(fn: object, x: int = 1) -> Driver:
    """Runs a versioned workflow live to completion: old_step/new_step results as recorded."""
    d = Driver(fn, x)  # type: ignore[arg-type]
    cmds = d.activate()
    while d.history[-1].type != h.WORKFLOW_COMPLETED:
        (sched,) = [c for c in cmds if c.type == h.ACTIVITY_SCHEDULED]
        kind = "old" if sched.data["activity_type"] == "old_step" else "new"
        cmds = d.activate(completed(sched.seq, f"{kind} {sched.data['input'][0]}"), after=1)
    return d


def rerun(fn: object, d: Driver) -> list[Event]:
    inst = replay(workflow.definition_of(fn), d.info, d.history)
    assert inst.closed
    return d.history


def test_a_new_run_records_the_patch_marker_and_takes_the_new_branch():
    d = run_to_end(versioned_v2)
    markers = [e for e in d.history if e.type == h.MARKER_RECORDED]
    assert [m.data for m in markers] == [{"kind": "patch", "patch_id": "use-new-step", "deprecated": False}]
    marker = markers[0]
    scheduled = [e for e in d.history if e.type == h.ACTIVITY_SCHEDULED]
    assert [e.data["activity_type"] for e in scheduled] == ["old_step", "new_step"]
    assert marker.seq + 1 == scheduled[1].seq  # recorded where the code asked
    assert d.result == ["old 1", "new 2", "True"]
    rerun(versioned_v2, d)  # and it replays


def test_a_run_recorded_by_the_old_code_replays_through_the_old_branch():
    old = run_to_end(versioned_v1)
    assert old.result == ["old 1", "old 2"]
    inst = replay(workflow.definition_of(versioned_v2), old.info, old.history)
    assert inst.closed  # every command matched: the old branch was taken, no marker produced


def test_the_old_run_continues_live_on_the_old_branch_after_a_replay():
    # A worker's cache miss: replay what was recorded by v1, then carry on live with v2.
    old = Driver(versioned_v1, 1)
    (first,) = old.activate()
    (second,) = old.activate(completed(first.seq, "old 1"), after=1)
    assert second.data["activity_type"] == "old_step"
    history = old.history
    # Cut the history after the first activity completed but before the run went on:
    # the second batch's commands are what v2 must reproduce.
    inst = replay(workflow.definition_of(versioned_v2), old.info, history)
    marker = Event(history[-1].seq + 1, h.WORKFLOW_TASK_STARTED, {"time": old.now.timestamp() + 1})
    done = Event(marker.seq + 1, h.ACTIVITY_COMPLETED, {"activity_seq": second.seq, "result": "old 2"})
    (close,) = inst.activate(marker, [done])
    # Memoized: the later patched() call, now live, still says False and records nothing.
    assert close.type == h.WORKFLOW_COMPLETED
    assert close.data["result"] == ["old 1", "old 2", "False"]


def test_a_replay_does_not_take_the_new_branch_past_the_end_of_a_batch():
    # The patched() call happens in a batch whose recorded commands end before it:
    # replaying says False (the old code produced nothing there).
    @workflow.defn(name="late")
    async def late_v1() -> str:
        await workflow.sleep(5)
        return "done"

    @workflow.defn(name="late")
    async def late_v2() -> str:
        await workflow.sleep(5)
        return "patched" if workflow.patched("p") else "done"

    d = Driver(late_v1)
    (timer,) = d.activate()
    d.activate((h.TIMER_FIRED, {"timer_seq": timer.seq}), after=5)
    inst = replay(workflow.definition_of(late_v2), d.info, d.history)
    assert inst.closed


def test_the_unguarded_change_raises_non_determinism_error_on_an_old_history():
    old = run_to_end(versioned_v1)
    with pytest.raises(NonDeterminismError) as info:
        replay(workflow.definition_of(versioned_unguarded), old.info, old.history)
    second = [e for e in old.history if e.type == h.ACTIVITY_SCHEDULED][1]
    assert info.value.seq == second.seq
    assert info.value.expected == "ActivityScheduled(activity_type='old_step')"
    assert info.value.produced == "ActivityScheduled(activity_type='new_step')"


def test_removing_patched_from_a_new_history_keeps_the_marker_mismatch_if_the_old_branch_runs():
    # A history with the marker, replayed by code that forces the old branch: divergence.
    new = run_to_end(versioned_v2)
    with pytest.raises(NonDeterminismError):
        replay(workflow.definition_of(versioned_v1), new.info, new.history)


def test_deprecate_patch_replays_histories_with_and_without_the_marker():
    new = run_to_end(versioned_v2)
    rerun(versioned_v3, new)  # marker present: produced and matched
    fresh = run_to_end(versioned_v3)  # live: recorded with deprecated=True
    markers = [e.data for e in fresh.history if e.type == h.MARKER_RECORDED]
    assert markers == [{"kind": "patch", "patch_id": "use-new-step", "deprecated": True}]
    rerun(versioned_v3, fresh)


def test_a_recorded_patch_marker_that_no_call_asks_for_is_skipped():
    for fn in (versioned_v2, versioned_v3):
        d = run_to_end(fn)
        rerun(versioned_v4, d)


def test_a_patch_marker_matches_on_its_id():
    @workflow.defn(name="versioned")
    async def other_patch(x: int) -> list[str]:
        first = await workflow.execute_activity(old_step, x, start_to_close_timeout=T)
        if workflow.patched("another-change"):
            second = await workflow.execute_activity(new_step, x + 1, start_to_close_timeout=T)
        else:
            second = await workflow.execute_activity(old_step, x + 1, start_to_close_timeout=T)
        return [first, second, "True"]

    # History has use-new-step; the code asks for another-change: replay says False for
    # it, skips the unknown marker, and then diverges on the activity (old vs new).
    d = run_to_end(versioned_v2)
    with pytest.raises(NonDeterminismError) as info:
        replay(workflow.definition_of(other_patch), d.info, d.history)
    assert info.value.produced == "ActivityScheduled(activity_type='old_step')"


def test_patch_commands_describe_by_id_and_match_kind_and_patch_id():
    marker = Event(5, h.MARKER_RECORDED, {"kind": "patch", "patch_id": "a", "deprecated": False})
    cmd = h.Command(5, h.MARKER_RECORDED, {"kind": "patch", "patch_id": "a", "deprecated": True})
    assert cmd.matches(marker)  # deprecated is not part of the identity
    assert not h.Command(5, h.MARKER_RECORDED, {"kind": "patch", "patch_id": "b"}).matches(marker)
    assert not h.Command(5, h.MARKER_RECORDED, {"kind": "saga", "event": "started"}).matches(marker)
    assert cmd.describe() == "MarkerRecorded(kind='patch', patch_id='a')"
    assert summarize(marker) == "patch a"


def test_patched_needs_an_id_and_a_workflow():
    @workflow.defn
    async def empty_id() -> bool:
        return workflow.patched("")

    d = Driver(empty_id)
    # InputValidationError is not a bug type: it fails the run, with a clear message.
    (close,) = d.activate()
    assert close.type == h.WORKFLOW_FAILED
    assert "non-empty patch id" in close.data["failure"]["message"]
    with pytest.raises(CairnError, match="only inside workflow code"):
        workflow.patched("x")
    with pytest.raises(InputValidationError):
        workflow.deprecate_patch(None)  # type: ignore[arg-type]
