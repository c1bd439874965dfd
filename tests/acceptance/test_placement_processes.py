"""A keyed run's work keeps its place in the claim order through ``kill -9`` of worker
processes (issue 18; migrations 0025, 0027): an activity retry booked by a worker that is
then killed is placed by another worker's maintenance pass, ahead of the backlog another key
queued before it was ready; a run's later workflow task (after a signal) keeps its place
while the workers running it are killed and restarted, and the next worker claims it ahead
of that backlog. Asserted from the database: the places in the task tables, the order in
which history was recorded, ``cairn verify``. The same order from the claim statements in
one process: tests/integration/test_workflow_task_places.py and test_priority_fairness.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from acceptance_support import cairn_cli

from cairn import Priority
from cairn.sync import SyncClient
from support import query, wait_for

pytestmark = pytest.mark.acceptance

A = Priority(fairness_key="tenant-a")
B = Priority(fairness_key="tenant-b")


def verify_clean(db_url: str) -> None:
    ran = cairn_cli("verify", "-m", "placement_flows", db_url=db_url)
    assert ran.code == 0, ran.out + ran.err


def a_before(db_url: str, table: str, b_id: str, extra: str = "") -> int:
    """How many of A's waiting rows of ``table`` are placed strictly before B's (``b_id``)."""
    [(n,)] = query(db_url, f"""
        SELECT count(*) FROM cairn.{table} a, cairn.{table} b JOIN cairn.runs r ON r.run_id = b.run_id
        WHERE r.workflow_id = %s AND a.fairness_key = 'tenant-a' AND a.available_at < b.available_at {extra}""",
                   (b_id,))
    return int(n)


def test_an_activity_retry_booked_by_a_killed_worker_is_placed_by_another(db_url: str, workers: Any,
                                                                          tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    runner = workers("wf", module="placement_flows")  # runs the workflows; not the activities' queue
    with SyncClient(db_url) as client:
        # A's 40 activities wait, each placed a stride after the last (started one at a time:
        # no two in one record statement, so no two share a place).
        for i in range(40):
            client.start("one_step", f"a{i}", gate, id=f"a-{i}", priority=A)
            wait_for(f"a-{i}'s activity", lambda n=i + 1: query(
                db_url, "SELECT count(*) FROM cairn.activity_tasks") == [(n,)], procs=(runner,))
        # B's enters at their head (a new key), tied with a-0.
        client.start("one_step", "b", gate, id="b", priority=B)
        wait_for("b's activity", lambda: query(db_url, "SELECT count(*) FROM cairn.activity_tasks") == [(41,)],
                 procs=(runner,))
    assert a_before(db_url, "activity_tasks", "b") == 0
    # A worker of the activities' queue with two slots claims a-0 and B; B's attempt fails and
    # its retry is booked (4 s off); a-0, then a-1, hold its slots until the gate opens.
    doomed = workers("doomed", "-q", "placement", "--activity-concurrency", "2", module="placement_flows")
    booked = wait_for("b's retry to be booked", lambda: query(db_url, """
        SELECT p.ready_at, p.ready_at > now() FROM cairn.retry_places p JOIN cairn.runs r USING (run_id)
        WHERE r.workflow_id = 'b'"""), procs=(doomed,))
    doomed.kill9()
    [(ready_at, not_due)] = booked
    assert not_due, "the retry was booked 4 s off: not placed before the kill"
    # Its ready time comes after all of A's places: without its booking, it would be claimed last.
    assert a_before(db_url, "activity_tasks", "b", "AND a.lease_owner IS NULL") >= 36
    # The other worker's maintenance pass places it when due, at B's next turn.
    wait_for("the booking to be placed", lambda: query(db_url, "SELECT count(*) FROM cairn.retry_places p "
                                                               "JOIN cairn.runs r USING (run_id) "
                                                               "WHERE r.workflow_id = 'b'") == [(0,)],
             procs=(runner,))
    [(available_at, lease)] = query(db_url, """SELECT a.available_at, a.lease_owner FROM cairn.activity_tasks a
                                               JOIN cairn.runs r USING (run_id) WHERE r.workflow_id = 'b'""")
    assert available_at < ready_at
    assert lease is None
    assert a_before(db_url, "activity_tasks", "b", "AND a.lease_owner IS NULL") == 0
    # A new worker of the queue, two slots, the gate still shut: its first claim takes B's
    # retry (and the A tied with it), so B completes while A's backlog still waits.
    taker = workers("taker", "-q", "placement", "--activity-concurrency", "2", module="placement_flows")
    wait_for("b to complete", lambda: query(db_url, "SELECT status FROM cairn.runs WHERE workflow_id = 'b'")
             == [("completed",)], procs=(runner, taker))
    [(waiting,)] = query(db_url, "SELECT count(*) FROM cairn.activity_tasks WHERE lease_owner IS NULL")
    assert waiting >= 30, waiting
    Path(gate).touch()
    wait_for("every run to complete", lambda: query(
        db_url, "SELECT count(*) FROM cairn.runs WHERE status = 'completed'") == [(41,)], procs=(runner, taker))
    [(attempts,)] = query(db_url, """SELECT h.data -> 'attempt' FROM cairn.history h JOIN cairn.runs r USING (run_id)
                                     WHERE r.workflow_id = 'b' AND h.type = 'ActivityCompleted'""")
    assert attempts == 2
    verify_clean(db_url)


def test_a_runs_later_task_keeps_its_place_while_its_workers_are_killed(db_url: str, workers: Any,
                                                                          tmp_path: Path) -> None:
    marker = tmp_path / "hanging"
    first = workers("first", "--workflow-concurrency", "1", module="placement_flows")
    with SyncClient(db_url) as client:
        client.start("chain", "b", str(marker), id="b", priority=B)
        wait_for("b's first task", lambda: query(db_url, """
            SELECT count(*) FROM cairn.history h JOIN cairn.runs r USING (run_id)
            WHERE r.workflow_id = 'b' AND h.type = 'WorkflowTaskStarted'""") == [(1,)], procs=(first,))
        first.kill9()
        # No worker: A's 60 tasks wait, each a stride after the last.
        for i in range(60):
            client.start("chain", f"a{i}", "", id=f"a-{i}", priority=A)
        client.signal("b", "go", 1)  # B's next task: placed at its turn, at A's head (0025)
    [(placed_at,)] = query(db_url, """SELECT t.available_at FROM cairn.workflow_tasks t JOIN cairn.runs r USING (run_id)
                                      WHERE r.workflow_id = 'b'""")
    assert a_before(db_url, "workflow_tasks", "b") == 0
    for round_ in range(2):
        # A worker claims the head of the order, B's task with it, and hangs in B's code
        # (its batch's transaction open, B's task locked); it is killed there.
        marker.unlink(missing_ok=True)
        hung = workers(f"hung-{round_}", "-m", "placement_hang", "--workflow-concurrency", "1",
                       module="placement_flows")
        wait_for("b's code to hang", marker.exists, procs=(hung,))
        hung.kill9()
        [(available_at, failures)] = query(db_url, """
            SELECT t.available_at, t.failures FROM cairn.workflow_tasks t JOIN cairn.runs r USING (run_id)
            WHERE r.workflow_id = 'b'""")
        assert (available_at, failures) == (placed_at, 0)
        assert a_before(db_url, "workflow_tasks", "b") == 0
        assert query(db_url, "SELECT count(*) FROM cairn.runs WHERE status = 'completed'") == [(0,)]
    last = workers("last", "--workflow-concurrency", "1", module="placement_flows")
    wait_for("every run to complete", lambda: query(
        db_url, "SELECT count(*) FROM cairn.runs WHERE status = 'completed'") == [(61,)], procs=(last,))
    # Recorded in the order claimed: B's second task with the first batches, not after A's 60.
    [(b_at, worker)] = query(db_url, """
        SELECT h.at, h.data ->> 'worker' FROM cairn.history h JOIN cairn.runs r USING (run_id)
        WHERE r.workflow_id = 'b' AND h.type = 'WorkflowTaskStarted' ORDER BY h.seq DESC LIMIT 1""")
    assert worker == "last"
    [(before,)] = query(db_url, """
        SELECT count(*) FROM cairn.history h JOIN cairn.runs r USING (run_id)
        WHERE r.workflow_id LIKE 'a-%%' AND h.type = 'WorkflowTaskStarted' AND h.at < %s""", (b_at,))
    assert before <= 8, before  # at most the batch before B's (a claim takes 8)
    verify_clean(db_url)
