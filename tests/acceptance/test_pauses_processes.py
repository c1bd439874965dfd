"""Pause and resume (issue 18, item 5) with worker processes and the CLI: a run paused
while its activity runs, its worker killed with -9, resumed later on another worker,
completes once; activity types and queues paused with ``cairn pause``; an activity paused
by its retry policy (``on_exhausted="pause"``), resumed with ``cairn activity unpause``.
``cairn verify`` is clean after each. Progress is read from the database, never slept for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from acceptance_support import cairn_cli

from support import outcomes_per_activity, query, wait_for

pytestmark = pytest.mark.acceptance


def cli(db_url: str, *args: str) -> dict | list:  # type: ignore[type-arg]
    ran = cairn_cli(*args, "--json", db_url=db_url)
    assert ran.code == 0, (args, ran.out, ran.err)
    return json.loads(ran.out)  # type: ignore[no-any-return]


def start(db_url: str, workflow_type: str, workflow_id: str, arg: str) -> str:
    return str(cli(db_url, "start", workflow_type, "--id", workflow_id, "--input", json.dumps(arg))["run_id"])


def control(db_url: str, tag: str) -> None:
    """A run of its own, completed: the live worker is claiming."""
    out = cli(db_url, "start", "one_step", "--id", f"control-{tag}", "--input", json.dumps(tag), "--wait")
    assert out["status"] == "completed", out


def verify_clean(db_url: str) -> None:
    ran = cairn_cli("verify", "-m", "pause_flows", db_url=db_url)
    assert ran.code == 0, ran.out + ran.err


def test_run_paused_worker_killed_resumed_completes_once(db_url, workers, tmp_path: Path):
    a = workers("a", module="pause_flows")
    release = tmp_path / "release"
    run_id = start(db_url, "held_then_signal", "held", str(release))
    wait_for("hold to run on a", lambda: query(db_url, "SELECT lease_owner FROM cairn.activity_tasks WHERE run_id = "
                                               "%s", (run_id,)) == [("a",)], procs=(a,))
    paused = cli(db_url, "pause", "held", "--note", "downstream maintenance")
    assert paused["paused"]["note"] == "downstream maintenance"
    assert paused["activities_held"] == 1
    a.kill9()  # mid-attempt, while the run is paused
    b = workers("b", module="pause_flows")
    # a's lease lapses: the reaper retries the attempt, which stays held (not claimed by b).
    wait_for("a's attempt to be reaped", lambda: query(
        db_url, "SELECT lease_owner, paused, last_failure ->> 'type' FROM cairn.activity_tasks WHERE run_id = %s",
        (run_id,)) == [(None, True, "WorkerLost")], procs=(b,))
    release.touch()
    assert cli(db_url, "signal", "held", "go", "--input", '"go"')["signal"] == "go"
    control(db_url, "held")
    assert query(db_url, "SELECT attempt, lease_owner FROM cairn.activity_tasks WHERE run_id = %s", (run_id,)) == \
        [(1, None)]
    assert query(db_url, "SELECT count(*) FROM cairn.history WHERE run_id = %s AND type = 'SignalReceived'",
                 (run_id,)) == [(0,)]
    listed = cli(db_url, "pauses")
    assert [(p["kind"], p["workflow_id"], p["note"]) for p in listed] == [("run", "held", "downstream maintenance")]
    described = cli(db_url, "describe", "held")
    assert described["paused"]["note"] == "downstream maintenance"
    assert described["pending_activities"][0]["paused"] is True

    assert cli(db_url, "unpause", "held")["was_paused"] is True
    wait_for("held to complete", lambda: query(db_url, "SELECT status FROM cairn.runs WHERE run_id = %s",
                                               (run_id,)) == [("completed",)], procs=(b,))
    result = query(db_url, "SELECT data -> 'result' FROM cairn.history WHERE run_id = %s AND type = "
                   "'WorkflowCompleted'", (run_id,))
    assert result == [(["held release on attempt 2", "go", "done after"],)]
    assert set(outcomes_per_activity(lambda s, p=None: query(db_url, s, p), run_id).values()) == {1}
    assert cli(db_url, "pauses") == []
    verify_clean(db_url)


def test_cli_pauses_types_queues_and_exhausted_activities(db_url, workers, tmp_path: Path):
    w = workers("w", module="pause_flows")
    assert cli(db_url, "pause", "--activity-type", "step", "--note", "rate card changes")["paused"] is True
    run_id = start(db_url, "one_step", "typed", "typed")
    wait_for("step to be scheduled", lambda: query(db_url, "SELECT attempt, lease_owner FROM cairn.activity_tasks "
                                                   "WHERE run_id = %s", (run_id,)) == [(0, None)], procs=(w,))
    assert [p["kind"] for p in cli(db_url, "pauses")] == ["activity_type"]
    assert cli(db_url, "unpause", "--activity-type", "step")["was_paused"] is True
    wait_for("typed to complete", lambda: query(db_url, "SELECT status FROM cairn.runs WHERE run_id = %s",
                                                (run_id,)) == [("completed",)], procs=(w,))

    assert cli(db_url, "pause", "--queue", "default")["paused"] is True
    queued = start(db_url, "one_step", "queued", "queued")
    wait_for("step to be scheduled", lambda: query(db_url, "SELECT attempt FROM cairn.activity_tasks "
                                                   "WHERE run_id = %s", (queued,)) == [(0,)], procs=(w,))
    assert cli(db_url, "unpause", "--queue", "default")["was_paused"] is True
    wait_for("queued to complete", lambda: query(db_url, "SELECT status FROM cairn.runs WHERE run_id = %s",
                                                 (queued,)) == [("completed",)], procs=(w,))

    missing = tmp_path / "config"
    fixed = start(db_url, "until_fixed", "fixed", str(missing))
    failed = start(db_url, "until_fixed", "failed", str(tmp_path / "never"))
    for r in (fixed, failed):
        wait_for("the attempts to run out", lambda r=r: query(
            db_url, "SELECT attempt, pause ->> 'reason' FROM cairn.activity_tasks WHERE run_id = %s",
            (r,)) == [(3, "exhausted")], procs=(w,))
    listed = {p["workflow_id"]: p for p in cli(db_url, "pauses")}
    assert listed["fixed"]["reason"] == "exhausted"
    assert listed["fixed"]["retry_state"] == "maximum_attempts"
    assert listed["fixed"]["last_failure"]["type"] == "ConnectionError"
    missing.touch()
    seq = str(listed["fixed"]["seq"])
    assert cli(db_url, "activity", "unpause", "fixed", seq)["was_paused"] is True
    assert cli(db_url, "activity", "fail", "failed", "--seq", seq, "--message", "no config")["outcome"] == "failed"
    for r, status in ((fixed, "completed"), (failed, "failed")):
        wait_for(f"{r} to close", lambda r=r, status=status: query(
            db_url, "SELECT status FROM cairn.runs WHERE run_id = %s", (r,)) == [(status,)], procs=(w,))
    assert query(db_url, "SELECT data -> 'result' FROM cairn.history WHERE run_id = %s AND type = "
                 "'WorkflowCompleted'", (fixed,)) == [("found it on attempt 1",)]
    bad = cairn_cli("pause", "fixed", db_url=db_url)  # closed: bad input, nothing written
    assert bad.code == 2, bad.err
    assert cli(db_url, "pauses") == []
    verify_clean(db_url)
