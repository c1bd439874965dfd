"""A worker dies (kill -9) in the middle of a saga's compensation; another worker finishes
it, and every compensation takes effect exactly once."""

from __future__ import annotations

import json
import signal
from collections import Counter

import flows
import pytest
from acceptance_support import cairn_cli, history, run_status, start_runs

from support import query, wait_for

pytestmark = pytest.mark.acceptance


def test_killed_during_a_compensation_is_finished_by_another_worker_once(workers, side_tables):
    db = side_tables
    a = workers("a")
    start_runs(db, flows.saga_trip, [("saga-crash", flows.SagaTrip(steps=4, fail_at=4, hold_undo=2, hold=600))])
    # undo-3 has run; undo-2's first attempt has applied its effect and now blocks: kill the worker.
    # (Wait for its effect, not for its attempt row: the two are separate writes, and under
    # load a kill between them left undo-2's effect to its second attempt.)
    wait_for("the second compensation to apply its effect",
             lambda: query(db, "SELECT 1 FROM effects WHERE label = 'undo-2'"), procs=(a,))
    a.kill9()
    assert a.proc.returncode == -signal.SIGKILL
    assert run_status(db, "saga-crash") == "running"

    b = workers("b")
    wait_for("the run to fail, compensated", lambda: run_status(db, "saga-crash") == "failed", procs=(a, b))

    events = history(db, "saga-crash")
    assert [s for s, *_ in events] == list(range(1, len(events) + 1))
    undo = [(s, d["input"][1]) for s, t, d, _ in events
            if t == "ActivityScheduled" and d["activity_type"] == "saga_undo"]
    assert [i for _, i in undo] == [3, 2, 1], "compensations ran newest first"
    assert all(d.get("compensation") is not None for s, t, d, _ in events if s in dict(undo))
    completions = Counter(d["activity_seq"] for _, t, d, _ in events if t == "ActivityCompleted")
    assert [completions[s] for s, _ in undo] == [1, 1, 1], "each compensation completed once in history"
    assert not [d for _, t, d, _ in events if t == "ActivityFailed" and d["activity_seq"] in dict(undo)]
    attempt_of = {d["activity_seq"]: d["attempt"] for _, t, d, _ in events if t == "ActivityCompleted"}
    assert attempt_of[undo[1][0]] >= 2, "the killed attempt's result was never recorded"
    markers = [d["event"] for _, t, d, _ in events if t == "MarkerRecorded"]
    assert markers == ["started", "compensation_started", "compensation_ended"]
    failure = events[-1][2]["failure"]
    assert events[-1][1] == "WorkflowFailed"
    assert "StepFailed: step 4 failed" in failure["message"]
    (saga,) = failure["sagas"]
    assert saga["status"] == "compensated"
    assert [c["status"] for c in saga["compensations"]] == ["completed"] * 3

    # The effects, keyed by the idempotency key: one per compensation, though undo-2 ran twice.
    effects = query(db, "SELECT label, count(*), count(DISTINCT key) FROM effects WHERE label LIKE 'undo-%' "
                        "GROUP BY label ORDER BY label")
    assert effects == [("undo-1", 1, 1), ("undo-2", 1, 1), ("undo-3", 1, 1)]
    assert query(db, "SELECT label, attempt FROM effects WHERE label = 'undo-2'") == [("undo-2", 1)]
    tries = query(db, "SELECT attempt, pid, key FROM attempts WHERE label = 'undo-2' ORDER BY id")
    assert [n for n, _, _ in tries][:2] == [1, 2]
    assert tries[0][1] == a.pid
    assert tries[-1][1] == b.pid
    assert len({key for _, _, key in tries}) == 1
    assert query(db, "SELECT label FROM attempts WHERE label LIKE 'undo-%' ORDER BY id")[0] == ("undo-3",)
    for table in ("workflow_tasks", "activity_tasks", "timers", "inbox"):
        assert query(db, f"SELECT count(*) FROM cairn.{table}") == [(0,)], table

    # `cairn describe` shows the saga; the recorded history replays against the code.
    ran = cairn_cli("describe", "saga-crash", db_url=db)
    assert ran.code == 0, ran.err
    assert "saga 3: compensated (sequential, continue on error)" in ran.out
    assert "reason    ActivityError: activity saga_step (seq 13) failed: StepFailed: step 4 failed" in ran.out
    assert [line.split()[:4] for line in ran.out.splitlines() if line.startswith("compensation ")] == [
        ["compensation", str(s), "saga_undo", "completed"] for s, _ in undo]
    ran = cairn_cli("describe", "saga-crash", "--json", db_url=db)
    assert ran.code == 0, ran.err
    (view,) = json.loads(ran.out)["sagas"]
    assert [c["seq"] for c in view["compensations"]] == [s for s, _ in undo]
    ran = cairn_cli("replay", "saga-crash", "-m", "flows", db_url=db)
    assert ran.code == 0, ran.out + ran.err
    assert ran.out.startswith("OK: ")


def test_killed_during_the_first_compensation_failing_at_each_step(workers, side_tables):
    """A 5-step saga failing at each step k in turn (compensations registered after their
    step, and before it): the worker is killed during the first compensation of every run
    at once; another worker finishes them, each compensation of steps < k (and k when
    pre-registered) exactly once, newest first."""
    db = side_tables
    runs = {}
    for pre in (False, True):
        for k in range(1 if pre else 2, 6):
            first_undo = k if pre else k - 1
            runs[f"saga-k{k}-{'pre' if pre else 'after'}"] = (k, pre, flows.SagaTrip(
                steps=5, fail_at=k, hold_undo=first_undo, hold=600, pre_register=pre))
    start_runs(db, flows.saga_trip, [(wid, trip) for wid, (_, _, trip) in runs.items()])
    a = workers("a")
    for wid, (_, _, trip) in runs.items():
        wait_for(f"the first compensation of {wid} to hold",
                 lambda wid=wid, trip=trip: query(db, "SELECT 1 FROM attempts WHERE workflow_id = %s AND label = %s",
                                                  (wid, f"undo-{trip.hold_undo}")), procs=(a,))
    a.kill9()
    b = workers("b")
    for wid in runs:
        wait_for(f"{wid} to fail, compensated", lambda wid=wid: run_status(db, wid) == "failed", procs=(a, b))

    for wid, (k, pre, _) in runs.items():
        expected = list(range(k if pre else k - 1, 0, -1))
        events = history(db, wid)
        assert [s for s, *_ in events] == list(range(1, len(events) + 1)), wid
        undo = [(s, d["input"][1]) for s, t, d, _ in events
                if t == "ActivityScheduled" and d["activity_type"] == "saga_undo"]
        assert [i for _, i in undo] == expected, wid
        completions = Counter(d["activity_seq"] for _, t, d, _ in events if t == "ActivityCompleted")
        assert [completions[s] for s, _ in undo] == [1] * len(undo), wid
        assert not [d for _, t, d, _ in events if t == "ActivityFailed" and d["activity_seq"] in dict(undo)], wid
        assert [d["event"] for _, t, d, _ in events if t == "MarkerRecorded"] == [
            "started", "compensation_started", "compensation_ended"], wid
        assert f"StepFailed: step {k} failed" in events[-1][2]["failure"]["message"], wid
        effects = query(db, "SELECT label, count(*) FROM effects WHERE workflow_id = %s AND label LIKE 'undo-%%' "
                            "GROUP BY label ORDER BY label", (wid,))
        assert effects == [(f"undo-{i}", 1) for i in sorted(expected)], wid
        # The held compensation ran on a, was killed, and was finished by b, once in effect.
        tries = query(db, "SELECT pid FROM attempts WHERE workflow_id = %s AND label = %s ORDER BY id",
                      (wid, f"undo-{expected[0]}"))
        assert tries[0][0] == a.pid, wid
        assert tries[-1][0] == b.pid, wid
    for table in ("workflow_tasks", "activity_tasks", "timers", "inbox"):
        assert query(db, f"SELECT count(*) FROM cairn.{table}") == [(0,)], table
