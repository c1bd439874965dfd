"""Asynchronous activity completion across processes: the worker that ran the activity is
killed (kill -9) after handing out the task token; the outside system's completion, sent
with the real ``cairn activity complete``, still lands, exactly once."""

from __future__ import annotations

import json
import signal
import time

import async_flows
import pytest
from acceptance_support import cairn_cli, history, run_status, start_runs

from cairn.store import db
from support import PrivatePostgres, query, wait_for

pytestmark = pytest.mark.acceptance


def _handed_out(workers, db_url: str, order: str) -> tuple[str, object]:
    """Worker "a" runs the activity of a new checkout ``order``, which hands out its token
    and leaves the worker; returns the token and the worker, killed (kill -9)."""
    query(db_url, "CREATE TABLE public.async_tokens (order_id text, attempt int, token text, pid int)")
    a = workers("a", module="async_flows", url=db_url)
    start_runs(db_url, async_flows.checkout, [(order, order)])
    token, pid = wait_for("the activity to hand out its token", lambda: query(
        db_url, "SELECT token, pid FROM public.async_tokens WHERE order_id = %s", (order,)), procs=(a,))[0]
    assert pid == a.pid
    wait_for("the attempt to leave its worker", lambda: query(
        db_url, "SELECT 1 FROM cairn.activity_tasks WHERE lease_owner = 'async:a'"), procs=(a,))
    a.kill9()
    assert a.proc.returncode == -signal.SIGKILL
    return token, a


def _landed_once(db_url: str, order: str, result: object) -> None:
    events = history(db_url, order)
    completed = [d for _, t, d, _ in events if t == "ActivityCompleted"]
    assert completed == [{"activity_seq": 3, "result": result, "attempt": 1}]
    assert events[-1][2] == {"result": {"order": order, "charge": result}}
    assert not [t for _, t, _, _ in events if t == "ActivityFailed"]
    for table in ("workflow_tasks", "activity_tasks", "inbox"):
        assert query(db_url, f"SELECT count(*) FROM cairn.{table}") == [(0,)], table


def test_completion_lands_once_after_the_worker_is_killed(workers, db_url):
    token, _ = _handed_out(workers, db_url, "order-7")

    # Past the dead worker's 2 s lease, with a live worker reaping: the attempt is not
    # taken over (its lease no longer depends on its worker).
    b = workers("b", module="async_flows")
    time.sleep(3.0)
    assert query(db_url, "SELECT attempt, lease_owner FROM cairn.activity_tasks") == [(1, "async:a")]
    assert query(db_url, "SELECT count(*) FROM public.async_tokens") == [(1,)]

    done = cairn_cli("activity", "complete", token, "--input", '{"charged": 42}', "--json", db_url=db_url)
    assert done.code == 0, done.err
    assert json.loads(done.out)["outcome"] == "completed"
    again = cairn_cli("activity", "complete", token, "--input", '{"charged": 43}', db_url=db_url)
    assert again.code == 2
    assert "Traceback" not in again.err

    wait_for("the run to complete", lambda: run_status(db_url, "order-7") == "completed", procs=(b,))
    _landed_once(db_url, "order-7", {"charged": 42})


def test_a_detached_attempt_survives_a_postgres_crash(workers, private_pg: PrivatePostgres):
    """kill -9 of the worker, then pg_ctl stop -m immediate and start: the detached attempt
    is still there, and the outside system's completion lands once."""
    with db.connect_sync(private_pg.url()) as c:
        c.execute("CREATE DATABASE faults")
    url = private_pg.url("faults")
    db.migrate(url)
    token, _ = _handed_out(workers, url, "order-8")
    private_pg.crash()
    private_pg.start()
    assert query(url, "SELECT attempt, lease_owner FROM cairn.activity_tasks") == [(1, "async:a")]
    b = workers("b", module="async_flows", url=url)
    done = cairn_cli("activity", "complete", token, "--input", '"paid"', db_url=url)
    assert done.code == 0, done.err
    wait_for("the run to complete", lambda: run_status(url, "order-8") == "completed", procs=(b,))
    _landed_once(url, "order-8", "paid")
