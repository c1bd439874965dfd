"""A schedule firing every second fires each slot exactly once while its worker processes are
killed with kill -9 and their Postgres connections are terminated (checked from the database)."""

from __future__ import annotations

import itertools
import json
import time
from datetime import timedelta

import pytest
from acceptance_support import cairn_cli

from cairn.store import db
from support import TIMEOUT, PrivatePostgres, query, wait_for

pytestmark = pytest.mark.acceptance

RUN_SECONDS = 14.0  # how long the schedule fires while workers die


def actions(db: str) -> list[tuple]:
    return query(db, "SELECT slot, status, workflow_id, run_id FROM cairn.schedule_actions ORDER BY slot")


def assert_each_slot_once(url: str, prefix: str) -> list[tuple]:
    """Every second from the first slot to the last, each once (the primary key), each
    started, each with one run of the slot's workflow id, completed."""
    rows = actions(url)
    slots = [r[0] for r in rows]
    assert [b - a for a, b in itertools.pairwise(slots)] == [timedelta(seconds=1)] * (len(slots) - 1)
    assert {r[1] for r in rows} == {"started"}
    runs = query(url, "SELECT workflow_id, run_id, status FROM cairn.runs WHERE workflow_id LIKE %s", (prefix + "-%",))
    assert len(runs) == len(rows)
    assert {(w, str(r)) for w, r, _ in runs} == {(w, str(r)) for _, _, w, r in rows}
    assert {s for _, _, s in runs} == {"completed"}
    return rows


def test_every_slot_fires_exactly_once_through_kill9_and_dropped_connections(workers, db_url):
    procs = [workers("a", module="schedule_flows"), workers("b", module="schedule_flows"),
             workers("c", module="schedule_flows")]
    made = cairn_cli("schedule", "create", "tick", "scheduled_tick", "--input", '"s"', "--every", "1s",
                     "--overlap", "allow_all", "--json", db_url=db_url)
    assert made.code == 0, made.err
    assert json.loads(made.out)["policy"]["overlap"] == "allow_all"
    wait_for("the first slot", lambda: actions(db_url), procs=procs)
    began = time.monotonic()
    step = 0
    while time.monotonic() - began < RUN_SECONDS:
        time.sleep(2.0)
        step += 1
        if step % 2:  # kill -9 one worker (mid-firing, as likely as not) and start another
            victim = next(p for p in procs if not p.killed)
            victim.kill9()
            procs.append(workers(f"r{step}", module="schedule_flows", wait=False))
        else:  # cut every worker's connections to Postgres (this test's database only: the
            # workers of tests running beside it are named cairn-* too, and lost theirs)
            query(db_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND application_name LIKE 'cairn-%%' "
                          "AND pid <> pg_backend_pid()")
    paused = cairn_cli("schedule", "pause", "tick", "--note", "test over", db_url=db_url)
    assert paused.code == 0, paused.err
    live = [p for p in procs if not p.killed]
    wait_for("every started run to close", lambda: not query(
        db_url, "SELECT 1 FROM cairn.runs WHERE workflow_id LIKE 'tick-%%' AND status = 'running'"),
        procs=live, timeout=TIMEOUT)

    rows = actions(db_url)
    slots = [r[0] for r in rows]
    assert len(rows) >= RUN_SECONDS - 2
    # Every second from the first slot to the last, each once (the primary key), each started.
    assert [b - a for a, b in itertools.pairwise(slots)] == [timedelta(seconds=1)] * (len(slots) - 1)
    assert {r[1] for r in rows} == {"started"}
    # One run per slot: its workflow id is the slot's, and it completed once.
    runs = query(db_url, "SELECT workflow_id, run_id, status FROM cairn.runs WHERE workflow_id LIKE 'tick-%%'")
    assert len(runs) == len(rows)
    assert {(w, str(r)) for w, r, _ in runs} == {(w, str(r)) for _, _, w, r in rows}
    assert {s for _, _, s in runs} == {"completed"}
    described = cairn_cli("schedule", "describe", "tick", "--json", db_url=db_url)
    info = json.loads(described.out)["info"]
    assert info["num_actions"] == len(rows)
    assert json.loads(described.out)["state"] == {"paused": True, "note": "test over"}


def test_every_slot_fires_exactly_once_through_a_postgres_restart(workers, private_pg: PrivatePostgres):
    """pg_ctl stop -m immediate while the schedule fires every second, then start: the slots
    that came due while Postgres was down are caught up, none twice; then a kill -9."""
    pg = private_pg
    with db.connect_sync(pg.url()) as c:
        c.execute("CREATE DATABASE sched")
    url = pg.url("sched")
    db.migrate(url)
    procs = [workers("a", module="schedule_flows", url=url), workers("b", module="schedule_flows", url=url)]
    made = cairn_cli("schedule", "create", "tock", "scheduled_tick", "--input", '"s"', "--every", "1s",
                     "--overlap", "allow_all", db_url=url)
    assert made.code == 0, made.err
    wait_for("three slots", lambda: len(actions(url)) >= 3, procs=procs)
    pg.crash()
    time.sleep(3.0)  # slots come due while the database is down
    pg.start()
    wait_for("slots after the restart", lambda: len(actions(url)) >= 10, procs=procs, timeout=TIMEOUT)
    procs[0].kill9()
    time.sleep(3.0)
    assert cairn_cli("schedule", "pause", "tock", db_url=url).code == 0
    wait_for("every started run to close", lambda: not query(
        url, "SELECT 1 FROM cairn.runs WHERE workflow_id LIKE 'tock-%%' AND status = 'running'"),
        procs=procs[1:], timeout=TIMEOUT)
    rows = assert_each_slot_once(url, "tock")
    assert len(rows) >= 12
