"""Local activities in worker processes: a worker killed (kill -9) while a local activity
runs inside its workflow task. The task's transaction never commits, so the activity runs
again on the next worker (at least once, as in Temporal); the markers already committed
are replayed, never run again, and each local activity's marker is recorded once."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import local_flows
import pytest
from acceptance_support import SIDE_TABLES, history, run_status, start_runs

from cairn.store import db
from cairn.verify import verify
from support import PrivatePostgres, query, wait_for

pytestmark = pytest.mark.acceptance


def local_markers(events: list[tuple[int, str, dict[str, Any], Any]]) -> list[dict[str, Any]]:
    return [d for _, t, d, _ in events if t == "MarkerRecorded" and d["kind"] == "local_activity"]


def test_killed_while_a_local_activity_runs_the_run_completes_with_one_marker_each(workers, side_tables):
    db = side_tables
    a = workers("a", module="local_flows")
    start_runs(db, local_flows.local_steps, [("la-crash", local_flows.LocalSteps(3, 15.0))])  # step 3 blocks
    wait_for("step 3 to start on worker a",
             lambda: query(db, "SELECT 1 FROM public.attempts WHERE label = 'step-3' AND pid = %s", (a.pid,)),
             procs=(a,))
    a.kill9()
    assert a.proc.returncode == -signal.SIGKILL
    # Steps 1 and 2 were committed with their tasks; step 3's marker was not.
    markers = [d for _, t, d, _ in history(db, "la-crash") if t == "MarkerRecorded"]
    assert [m["local_seq"] for m in markers] == [1, 2]

    b = workers("b", module="local_flows")
    wait_for("the run to complete", lambda: run_status(db, "la-crash") == "completed", procs=(a, b))
    events = history(db, "la-crash")
    assert events[-1][2]["result"] == ["step-1", "step-2", "step-3", "step-4"]
    markers = local_markers(events)
    assert Counter(m["local_seq"] for m in markers) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert [m["result"] for m in markers] == ["step-1", "step-2", "step-3", "step-4"]
    # Steps 1, 2 and 4 ran once; step 3 ran on a (killed before its commit) and again on b.
    ran = query(db, "SELECT label, pid FROM public.attempts ORDER BY id")
    assert [label for label, _ in ran] == ["step-1", "step-2", "step-3", "step-3", "step-4"]
    assert [pid for label, pid in ran if label == "step-3"] == [a.pid, b.pid]
    # The same idempotency key on both runs of step 3: its effect was applied once.
    assert query(db, "SELECT label FROM public.effects ORDER BY label") == [(f"step-{i}",) for i in range(1, 5)]
    assert query(db, "SELECT count(*) FROM cairn.activity_tasks") == [(0,)]
    seqs = [s for s, *_ in events]
    assert seqs == list(range(1, len(seqs) + 1))
    # The invariant checker agrees: the history replays, no local activity has two outcomes.
    report = asyncio.run(verify(db, workflows=[local_flows.local_steps]))
    assert report.violations == [], report.violations


def test_connection_terminated_while_a_local_activity_runs(workers, side_tables):
    """The task's session is terminated while its local activity runs: the worker lives on,
    its record fails, nothing of the task is kept; it claims the task again and the
    activity runs again; one marker each."""
    db = side_tables
    a = workers("a", module="local_flows")
    start_runs(db, local_flows.local_steps, [("la-conn", local_flows.LocalSteps(2, 5.0))])
    wait_for("step 2 to start", lambda: query(db, "SELECT 1 FROM public.attempts WHERE label = 'step-2'"), procs=(a,))
    terminated = query(db, """
        SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'cairn-a'
          AND state = 'idle in transaction' AND query LIKE '%%claim_workflow_task%%'""")
    # This database's task session only: other tests' workers are named a too, and the activity's own
    # session may be idle in a transaction at the same moment.
    assert terminated == [(True,)]
    wait_for("the run to complete", lambda: run_status(db, "la-conn") == "completed", procs=(a,))
    events = history(db, "la-conn")
    markers = local_markers(events)
    assert Counter(m["local_seq"] for m in markers) == {1: 1, 2: 1, 3: 1, 4: 1}
    ran = query(db, "SELECT label, pid FROM public.attempts ORDER BY id")
    assert [label for label, _ in ran] == ["step-1", "step-2", "step-2", "step-3", "step-4"]
    assert {pid for _, pid in ran} == {a.pid}
    assert query(db, "SELECT label FROM public.effects ORDER BY label") == [(f"step-{i}",) for i in range(1, 5)]


def test_postgres_restart_while_a_local_activity_runs(workers, private_pg: PrivatePostgres):
    """``pg_ctl stop -m immediate`` and start while a local activity runs in its task: the
    task never committed; the worker reconnects, claims it again, and the run completes
    with one marker each."""
    pg = private_pg
    with db.connect_sync(pg.url()) as c:
        c.execute("CREATE DATABASE la")
    url = pg.url("la")
    db.migrate(url)
    query(url, SIDE_TABLES)
    a = workers("a", module="local_flows", url=url)
    start_runs(url, local_flows.local_steps, [("la-restart", local_flows.LocalSteps(2, 5.0))])
    wait_for("step 2 to start", lambda: query(url, "SELECT 1 FROM public.attempts WHERE label = 'step-2'"),
             procs=(a,))
    pg.crash()
    pg.start()
    wait_for("the run to complete", lambda: run_status(url, "la-restart") == "completed", procs=(a,))
    markers = local_markers(history(url, "la-restart"))
    assert Counter(m["local_seq"] for m in markers) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert [label for (label,) in query(url, "SELECT label FROM public.attempts ORDER BY id")] == [
        "step-1", "step-2", "step-2", "step-3", "step-4"]
    assert query(url, "SELECT label FROM public.effects ORDER BY label") == [(f"step-{i}",) for i in range(1, 5)]
