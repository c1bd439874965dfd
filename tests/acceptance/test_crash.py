"""Worker processes die (kill -9) or are told to stop (SIGTERM); runs still finish, once."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import timedelta

import flows
import pytest
from acceptance_support import history, run_status, start_runs

from support import TIMEOUT, query, wait_for

pytestmark = pytest.mark.acceptance


def completions_by_seq(events: list[tuple[int, str, dict, object]]) -> Counter[int]:
    return Counter(d["activity_seq"] for _, t, d, _ in events if t == "ActivityCompleted")


def assert_clean_history(events: list[tuple[int, str, dict, object]], activities: int) -> None:
    """Seqs 1..N without gaps, one completion per scheduled activity, a completed run."""
    seqs = [s for s, *_ in events]
    assert seqs == list(range(1, len(seqs) + 1))
    scheduled = [s for s, t, _, _ in events if t == "ActivityScheduled"]
    done = completions_by_seq(events)
    assert len(scheduled) == activities
    assert sorted(done) == scheduled, "every scheduled activity completed"
    assert set(done.values()) == {1}, f"duplicated completions: {done}"
    assert not [t for _, t, _, _ in events if t == "ActivityFailed"]
    assert events[-1][1] == "WorkflowCompleted"


def test_killed_mid_activity_is_finished_by_another_worker(workers, side_tables):
    db = side_tables
    a = workers("a")
    start_runs(db, flows.steps, [("crash-mid", flows.StepsInput(n=3, hold_step=2, hold=600))])
    # Step 2's first attempt has applied its effect and is now blocked: kill the worker.
    # (Its effect, not its attempt row: separate writes, and a kill between them would leave
    # the effect to the second attempt.)
    wait_for("step 2 to apply its effect", lambda: query(db, "SELECT 1 FROM effects WHERE label = 'step-2'"),
             procs=(a,))
    a.kill9()
    assert a.proc.returncode == -signal.SIGKILL

    b = workers("b")
    wait_for("the run to complete", lambda: run_status(db, "crash-mid") == "completed", procs=(a, b))

    events = history(db, "crash-mid")
    assert_clean_history(events, activities=3)
    assert events[-1][2]["result"] == ["step-1", "step-2", "step-3"]
    attempt_of = {d["activity_seq"]: d["attempt"] for _, t, d, _ in events if t == "ActivityCompleted"}
    step2_seq = sorted(attempt_of)[1]
    assert attempt_of[step2_seq] >= 2, "the killed attempt's result was never recorded"
    # Every attempt saw the same idempotency key; the effect was applied once per step.
    effects = query(db, "SELECT label, attempt FROM effects ORDER BY label")
    assert effects == [("step-1", 1), ("step-2", 1), ("step-3", 1)]
    attempts = query(db, "SELECT label, attempt, pid FROM attempts WHERE label = 'step-2' ORDER BY id")
    assert [(lbl, n) for lbl, n, _ in attempts][:2] == [("step-2", 1), ("step-2", 2)]
    assert attempts[0][2] == a.pid
    assert attempts[-1][2] == b.pid
    keys = query(db, "SELECT count(DISTINCT key), count(*) FROM attempts WHERE label = 'step-2'")
    assert keys[0][0] == 1
    # Nothing is left behind.
    for table in ("workflow_tasks", "activity_tasks", "timers", "inbox"):
        assert query(db, f"SELECT count(*) FROM cairn.{table}") == [(0,)], table


def test_killed_between_steps_resumes_without_gaps(workers, side_tables):
    db = side_tables
    a = workers("a")
    start_runs(db, flows.steps, [("crash-between", flows.StepsInput(n=5, pause=0.3))])
    wait_for("step 2 to be recorded",
             lambda: sum(t == "ActivityCompleted" for _, t, _, _ in history(db, "crash-between")) >= 2,
             procs=(a,), interval=0.02)
    a.kill9()
    recorded_before = sum(t == "ActivityCompleted" for _, t, _, _ in history(db, "crash-between"))
    assert recorded_before < 5

    b = workers("b")
    wait_for("the run to complete", lambda: run_status(db, "crash-between") == "completed", procs=(a, b))

    events = history(db, "crash-between")
    assert_clean_history(events, activities=5)
    assert events[-1][2]["result"] == [f"step-{i}" for i in range(1, 6)]
    assert query(db, "SELECT label FROM effects ORDER BY label") == [(f"step-{i}",) for i in range(1, 6)]
    # Both processes ran workflow tasks of this run.
    ran_tasks = {d["worker"] for _, t, d, _ in events if t == "WorkflowTaskStarted"}
    assert ran_tasks == {"a", "b"}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
def test_durable_timer_survives_worker_restart(workers, db_url, sig):
    a = workers("a")
    start_runs(db_url, flows.sleeper, [("nap-time", 3.0)])
    wait_for("TimerStarted", lambda: any(t == "TimerStarted" for _, t, _, _ in history(db_url, "nap-time")),
             procs=(a,))
    a.proc.send_signal(sig)
    rc = a.proc.wait(timeout=TIMEOUT)
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), a.log()
    assert run_status(db_url, "nap-time") == "running"

    b = workers("b")
    wait_for("the run to complete", lambda: run_status(db_url, "nap-time") == "completed", procs=(a, b))
    events = history(db_url, "nap-time")
    types = [t for _, t, _, _ in events]
    assert types.count("TimerStarted") == 1
    assert types.count("TimerFired") == 1
    assert events[-1][1] == "WorkflowCompleted"
    assert events[-1][2]["result"] == "woke"
    started_at = next(at for _, t, _, at in events if t == "TimerStarted")
    fired_at = next(at for _, t, _, at in events if t == "TimerFired")
    assert fired_at - started_at >= timedelta(seconds=2.5), "the timer fired early"
    assert query(db_url, "SELECT count(*) FROM cairn.timers") == [(0,)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_stop_signal_drains_running_activity(workers, side_tables, sig):
    db = side_tables
    a = workers("a")
    start_runs(db, flows.slow, [("drain-me", 2.0)])
    wait_for("the activity to start", lambda: query(db, "SELECT 1 FROM attempts"), procs=(a,))
    a.proc.send_signal(sig)
    rc = a.proc.wait(timeout=TIMEOUT)
    assert rc == 0, a.log()
    assert "Traceback" not in a.log()
    # The drain let the attempt finish and record its result before the process exited.
    assert query(db, "SELECT label, attempt FROM effects") == [("nap", 1)]
    assert query(db, "SELECT count(*) FROM cairn.activity_tasks") == [(0,)]

    b = workers("b")
    wait_for("the run to complete", lambda: run_status(db, "drain-me") == "completed", procs=(a, b))
    events = history(db, "drain-me")
    assert_clean_history(events, activities=1)
    done = [d for _, t, d, _ in events if t == "ActivityCompleted"]
    assert done[0]["attempt"] == 1
    assert done[0]["result"] == "napped 2.0"
    assert query(db, "SELECT count(*) FROM attempts") == [(1,)], "the activity ran once"


def test_two_workers_share_load_without_duplicates(workers, side_tables):
    db = side_tables
    w1 = workers("w1")
    w2 = workers("w2")
    ids = [f"load-{i:02d}" for i in range(30)]
    start_runs(db, flows.steps, [(wid, flows.StepsInput(n=3)) for wid in ids])

    def all_done() -> bool:
        rows = query(db, "SELECT status, count(*) FROM cairn.runs GROUP BY status")
        return dict(rows).get("completed") == 30

    wait_for("30 runs to complete", all_done, timeout=120, procs=(w1, w2))

    dups = query(db, """
        SELECT run_id, data->>'activity_seq', count(*) FROM cairn.history
        WHERE type = 'ActivityCompleted' GROUP BY 1, 2 HAVING count(*) > 1""")
    assert dups == []
    counts = dict(query(db, """
        SELECT type, count(*) FROM cairn.history
        WHERE type IN ('ActivityScheduled', 'ActivityCompleted', 'WorkflowCompleted', 'ActivityFailed')
        GROUP BY type"""))
    assert counts == {"ActivityScheduled": 90, "ActivityCompleted": 90, "WorkflowCompleted": 30}
    gaps = query(db, """
        SELECT run_id FROM cairn.history GROUP BY run_id HAVING max(seq) <> count(*)""")
    assert gaps == []
    assert query(db, "SELECT count(*), count(DISTINCT key) FROM effects") == [(90, 90)]
    for wid in ids:
        events = history(db, wid)
        assert events[-1][2]["result"] == ["step-1", "step-2", "step-3"]
    workers_seen = {w for (w,) in query(db, """
        SELECT DISTINCT data->>'worker' FROM cairn.history WHERE type = 'WorkflowTaskStarted'""")}
    assert workers_seen == {"w1", "w2"}, "both workers took part"
    pids = {p for (p,) in query(db, "SELECT DISTINCT pid FROM attempts")}
    assert pids <= {w1.pid, w2.pid}


def test_worker_killed_under_load_loses_and_duplicates_nothing(workers, side_tables):
    db = side_tables
    w1 = workers("w1")
    w2 = workers("w2")
    ids = [f"chaos-{i:02d}" for i in range(20)]
    start_runs(db, flows.steps, [(wid, flows.StepsInput(n=3, pause=0.1)) for wid in ids])
    wait_for("some progress", lambda: query(db, "SELECT count(*) FROM effects")[0][0] >= 15,
             procs=(w1, w2), interval=0.02)
    w1.kill9()
    w3 = workers("w3")

    def all_done() -> bool:
        return query(db, "SELECT count(*) FROM cairn.runs WHERE status = 'completed'")[0][0] == 20

    wait_for("20 runs to complete", all_done, timeout=120, procs=(w1, w2, w3))
    dups = query(db, """
        SELECT run_id, data->>'activity_seq', count(*) FROM cairn.history
        WHERE type = 'ActivityCompleted' GROUP BY 1, 2 HAVING count(*) > 1""")
    assert dups == []
    for wid in ids:
        assert_clean_history(history(db, wid), activities=3)
    assert query(db, "SELECT count(*), count(DISTINCT key) FROM effects") == [(60, 60)]
    for table in ("workflow_tasks", "activity_tasks", "timers", "inbox"):
        assert query(db, f"SELECT count(*) FROM cairn.{table}") == [(0,)], table
