"""`cairn signal` and `cairn query` through the real entry point, answered by a real
`cairn worker` subprocess (on uvloop), before and after the run closes, and after the
worker that held the run live is killed."""

from __future__ import annotations

import json

import pytest
from acceptance_support import cairn_cli, history, run_status

from support import query, wait_for

pytestmark = pytest.mark.acceptance


def test_signal_and_query_through_a_worker_process(workers, db_url):
    first = workers("w1", "-m", "message_flows")
    ran = cairn_cli("start", "tally", "--input", "10", "--id", "t1", db_url=db_url)
    assert ran.code == 0, ran.err
    for n in (3, 4):
        ran = cairn_cli("signal", "t1", "add", "--input", str(n), db_url=db_url)
        assert ran.code == 0, ran.err
    wait_for("both signals applied", lambda: sum(t == "SignalReceived" for _, t, _, _ in history(db_url, "t1")) == 2
             and not query(db_url, "SELECT 1 FROM cairn.workflow_tasks"), procs=(first,))
    ran = cairn_cli("query", "t1", "status", db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == {"total": 7, "seen": 2}

    # The worker holding the run live dies: another one answers by replaying.
    first.kill9()
    workers("w2", "-m", "message_flows")
    ran = cairn_cli("query", "t1", "status", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["answer"] == {"total": 7, "seen": 2}

    ran = cairn_cli("signal", "t1", "add", "--input", "5", db_url=db_url)
    assert ran.code == 0, ran.err
    wait_for("t1 to complete", lambda: run_status(db_url, "t1") == "completed")
    # Closed: signals are refused (exit 2), queries still answered (by replay).
    ran = cairn_cli("signal", "t1", "add", "--input", "1", db_url=db_url)
    assert ran.code == 2
    assert "is closed" in ran.err
    ran = cairn_cli("query", "t1", "status", db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == {"total": 12, "seen": 3}
    assert query(db_url, "SELECT count(*) FROM cairn.query_requests") == [(0,)]
