"""Priority, fairness and per-key concurrency limits (issue 18, item 3) with worker
processes: a key's limit never exceeded as the database shows it, across two workers,
through a ``kill -9`` of a worker holding one of the key's slots (the slot comes back with
its attempt's lease); a waiting run starts only when the key's open run closes; a fairness
key's runs finish early while another key floods the queue, and priority 1 before 5.
``cairn verify`` is clean after each. Progress is read from the database, never slept for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from acceptance_support import cairn_cli

from cairn import Priority
from cairn.sync import SyncClient
from support import query, wait_for

pytestmark = pytest.mark.acceptance


def cli(db_url: str, *args: str) -> Any:
    ran = cairn_cli(*args, "--json", db_url=db_url)
    assert ran.code == 0, (args, ran.out, ran.err)
    return json.loads(ran.out)


def verify_clean(db_url: str) -> None:
    ran = cairn_cli("verify", "-m", "limit_flows", db_url=db_url)
    assert ran.code == 0, ran.out + ran.err


def test_activity_limit_holds_across_workers_and_a_kill(db_url: str, workers: Any, tmp_path: Path) -> None:
    assert cli(db_url, "limits", "set", "api", "2", "--kind", "activity")["released"] == 0
    a = workers("a", module="limit_flows")
    b = workers("b", module="limit_flows")
    release = tmp_path / "release"
    run_id = cli(db_url, "start", "fan_out", "--id", "fan", "--input", json.dumps(["api", str(release), 6]))["run_id"]
    most = 0

    def leased() -> list[tuple[Any, ...]]:
        """The key's leased attempts and slots in use, checked against the limit at every look."""
        nonlocal most
        rows = query(db_url, "SELECT lease_owner FROM cairn.activity_tasks WHERE concurrency_key = 'api' "
                             "AND lease_owner IS NOT NULL")
        in_use = query(db_url, "SELECT in_use FROM cairn.concurrency_limits WHERE key = 'api' AND kind = 'activity'")
        assert len(rows) <= 2, rows
        assert in_use[0][0] <= 2, in_use
        most = max(most, len(rows))
        return rows

    wait_for("two of the key's attempts to run", lambda: len(leased()) == 2, procs=(a, b))
    assert query(db_url, "SELECT count(*) FROM cairn.activity_tasks WHERE concurrency_key = 'api' "
                         "AND available_at = 'infinity'") == [(4,)]
    listed = cli(db_url, "limits", "list", "api")
    assert [(x["kind"], x["max_running"], x["in_use"], x["waiting"]) for x in listed] == [("activity", 2, 2, 4)]
    owners = leased()
    victim = a if ("a",) in owners else b
    survivor = b if victim is a else a
    held_by_victim = owners.count((victim.name,))
    victim.kill9()  # holding a slot (or both): it stays with the attempt, whose lease lapses
    wait_for("the killed worker's attempts to be reaped", lambda: query(
        db_url, "SELECT count(*) FROM cairn.activity_tasks WHERE concurrency_key = 'api' "
                "AND last_failure ->> 'type' = 'WorkerLost'") == [(held_by_victim,)] and len(leased()) <= 2,
        procs=(survivor,))
    # The reaped attempts took their slots back to the queue: the survivor runs them, no more.
    wait_for("the survivor to hold the key's two slots", lambda: leased() == [(survivor.name,)] * 2,
             procs=(survivor,))
    release.touch()
    wait_for("fan_out to complete", lambda: len(leased()) <= 2 and query(
        db_url, "SELECT status FROM cairn.runs WHERE run_id = %s", (run_id,)) == [("completed",)], procs=(survivor,))
    result = query(db_url, "SELECT data -> 'result' FROM cairn.history WHERE run_id = %s AND type = "
                           "'WorkflowCompleted'", (run_id,))
    assert result == [([0, 1, 2, 3, 4, 5],)]
    assert most == 2
    assert cli(db_url, "limits", "list", "api")[0]["in_use"] == 0
    verify_clean(db_url)


def test_workflow_limit_starts_waiting_runs_as_the_open_one_closes(db_url: str, workers: Any,
                                                                  tmp_path: Path) -> None:
    cli(db_url, "limits", "set", "customer-42", "1", "--kind", "workflow")
    a = workers("a", module="limit_flows")
    gates = [tmp_path / f"gate-{i}" for i in range(3)]
    for i, gate in enumerate(gates):
        cli(db_url, "start", "held_run", "--id", f"c42-{i}", "--input", json.dumps(str(gate)),
            "--concurrency-key", "customer-42", "--priority", "2")

    def started() -> list[str]:
        """The key's open runs that have started (their first task ran), at most one at every look."""
        rows = query(db_url, """SELECT r.workflow_id FROM cairn.runs r
                                WHERE r.concurrency_key = 'customer-42' AND r.status = 'running'
                                  AND EXISTS (SELECT 1 FROM cairn.history h WHERE h.run_id = r.run_id AND h.seq > 1)""")
        assert len(rows) <= 1, rows
        return [w for (w,) in rows]

    wait_for("c42-0 to run its activity", lambda: started() == ["c42-0"] and query(
        db_url, "SELECT count(*) FROM cairn.activity_tasks WHERE lease_owner = 'a'") == [(1,)], procs=(a,))
    described = cli(db_url, "describe", "c42-2")
    assert described["concurrency_key"] == "customer-42"
    assert described["waiting_for_slot"] is True
    assert described["priority"]["priority_key"] == 2
    a.kill9()  # the run keeps its slot: it is open, and resumes on another worker
    b = workers("b", module="limit_flows")
    for i, gate in enumerate(gates):
        gate.touch()
        wait_for(f"c42-{i} to complete", lambda i=i: started() != [f"c42-{i}"] and query(
            db_url, "SELECT status FROM cairn.runs WHERE workflow_id = %s", (f"c42-{i}",)) == [("completed",)],
            procs=(b,))
    assert cli(db_url, "limits", "list", "customer-42")[0]["in_use"] == 0
    assert cli(db_url, "limits", "delete", "customer-42", "--kind", "workflow")["released"] == 0
    assert cli(db_url, "limits", "list") == []
    verify_clean(db_url)


def test_fairness_and_priority_with_a_worker_process(db_url: str, workers: Any) -> None:
    with SyncClient(db_url) as client:
        for i in range(300):
            client.start("quick", f"a{i}", id=f"a-{i}", queue="default", priority=Priority(fairness_key="tenant-a"))
        for i in range(10):
            client.start("quick", f"b{i}", id=f"b-{i}", queue="default", priority=Priority(fairness_key="tenant-b"))
        for i in range(5):
            client.start("quick", f"p{i}", id=f"p5-{i}", queue="default", priority=5)
            client.start("quick", f"p{i}", id=f"p1-{i}", queue="default", priority=1)
    a = workers("a", module="limit_flows")
    wait_for("every run to complete", lambda: query(
        db_url, "SELECT count(*) FROM cairn.runs WHERE status = 'completed'") == [(320,)], procs=(a,))
    ranks = dict(query(db_url, "SELECT workflow_id, rank() OVER (ORDER BY closed_at, run_id) FROM cairn.runs"))
    # Priority 1 first, 5 last; B's ten among the first claims of the level, not after A's 300.
    # Ranks are by close: the four pollers claim batches of 8 at once and commit in any
    # order, so the first claim's five priority-1 runs may close after the other three
    # batches (the claim order itself: tests/integration/test_priority_fairness.py).
    assert max(ranks[f"p1-{i}"] for i in range(5)) <= 4 * 8, ranks
    assert min(ranks[f"p5-{i}"] for i in range(5)) > 300, ranks
    assert max(ranks[f"b-{i}"] for i in range(10)) <= 60, sorted(ranks[f"b-{i}"] for i in range(10))
    verify_clean(db_url)
