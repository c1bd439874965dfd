"""The patched golden histories: ``patched.json`` was recorded by the code before the
change (``unpatched_workflows.py``) and replays through the old branch of
``golden_workflows.golden_patched``; ``patched_new_run.json`` was recorded by the new code
and has the patch marker; the unguarded change diverges."""

from __future__ import annotations

import golden_workflows as g
import unpatched_workflows as old
from changed_workflows import golden_patched_unguarded

from cairn import workflow
from cairn.engine import history as h

from .test_replay import cairn, divergence, load, replay_file

OLD_RUN = "patched.json"
NEW_RUN = "patched_new_run.json"


@workflow.defn(name="golden_patched")
async def golden_patched_deprecated(x: int) -> dict[str, object]:
    """The next step: no old runs remain, the old branch is gone."""
    doubled = await workflow.execute_activity(g.double, x, start_to_close_timeout=g.TIMEOUT)
    workflow.deprecate_patch("greet-between")
    greeting = await workflow.execute_activity(g.greet, f"patched {doubled}", start_to_close_timeout=g.TIMEOUT)
    again = await workflow.execute_activity(g.double, doubled, start_to_close_timeout=g.TIMEOUT)
    return {"doubled": doubled, "greeting": greeting, "again": again}


def test_the_patched_golden_histories_have_the_expected_shape():
    data, events = load(OLD_RUN)
    assert (data["status"], data["workflow_type"]) == ("completed", "golden_patched")
    assert [(e.seq, e.type) for e in events] == [
        (1, h.WORKFLOW_STARTED), (2, h.WORKFLOW_TASK_STARTED), (3, h.ACTIVITY_SCHEDULED),
        (4, h.WORKFLOW_TASK_STARTED), (5, h.ACTIVITY_COMPLETED), (6, h.ACTIVITY_SCHEDULED),
        (7, h.WORKFLOW_TASK_STARTED), (8, h.ACTIVITY_COMPLETED), (9, h.WORKFLOW_COMPLETED),
    ]
    assert events[-1].data["result"] == {"doubled": 10, "again": 20}
    data, events = load(NEW_RUN)
    assert data["status"] == "completed"
    assert (events[5].seq, events[5].type, events[5].data) == (
        6, h.MARKER_RECORDED, {"kind": "patch", "patch_id": "greet-between", "deprecated": False})
    assert (events[6].type, events[6].data["activity_type"]) == (h.ACTIVITY_SCHEDULED, "greet")
    assert events[-1].data["result"] == {"doubled": 10, "greeting": "hello patched 10", "again": 20}


def test_the_old_run_replays_through_the_old_branch_of_the_new_code():
    inst = replay_file(OLD_RUN, g.golden_patched)
    assert inst.closed
    assert inst._patches == {"greet-between": False}
    assert replay_file(OLD_RUN, old.golden_patched_before).closed  # and against the code that recorded it


def test_the_new_run_replays_through_the_new_branch():
    inst = replay_file(NEW_RUN, g.golden_patched)
    assert inst.closed
    assert inst._patches == {"greet-between": True}


def test_the_unguarded_change_diverges_from_the_old_run():
    assert divergence(OLD_RUN, golden_patched_unguarded) == (
        6, "ActivityScheduled(activity_type='double')", "ActivityScheduled(activity_type='greet')")


def test_the_old_code_diverges_from_the_new_run():
    # The marker it does not ask for is skipped; the greeting it does not schedule is not.
    assert divergence(NEW_RUN, old.golden_patched_before) == (
        7, "ActivityScheduled(activity_type='greet')", "ActivityScheduled(activity_type='double')")


def test_deprecate_patch_replays_the_new_run_and_removing_it_too():
    assert replay_file(NEW_RUN, golden_patched_deprecated).closed
    assert replay_file(NEW_RUN, golden_patched_unguarded).closed  # the marker is skipped


def test_cli_replays_the_patched_golden_histories():
    for name in (OLD_RUN, NEW_RUN):
        data, events = load(name)
        out = cairn("replay", name, "-m", "golden_workflows")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == f"OK: {len(events)} events of {data['workflow_id']} replay with the current code"
    out = cairn("replay", OLD_RUN, "-m", "changed_workflows")
    assert out.returncode == 1
    assert out.stdout.strip() == (
        "DIVERGED: non-deterministic workflow at seq 6: history has ActivityScheduled(activity_type='double'), "
        "the code produced ActivityScheduled(activity_type='greet')")
