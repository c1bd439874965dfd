"""The database misbehaving under workers and a client: lost connections and a restart
(issue 15, item 11), a read-only episode (item 12) and a worker whose clock is wrong
(item 13)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import fault_flows
import psycopg
import pytest
from chaos_support import HERE, Fleet

from cairn import Client, breakers
from cairn.errors import OutcomeUnknown
from cairn.store import db
from cairn.store.sql import q
from support import CAIRN, PrivatePostgres, query, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

HOUR = 3600.0


def fill(pool: Any) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`wait_until`: takes every connection the pool may hold at once, and says
    whether each is a live read-only session."""
    async def check() -> bool:
        conns = [await pool.getconn() for _ in range(pool.max_size)]
        try:
            modes = []
            for conn in conns:
                try:
                    modes.append((await (await conn.execute("SHOW default_transaction_read_only")).fetchone())[0])
                except psycopg.OperationalError:
                    modes.append("lost")
            return all(mode == "on" for mode in modes)
        finally:
            for conn in conns:
                await pool.putconn(conn)

    return check


async def test_workers_resume_after_a_read_only_episode(db_url: str, pg_admin_url: str,
                                                        start_worker: Callable[..., Any]) -> None:
    """A managed failover behind one endpoint: the database turns read-only and every
    session is cut; the worker and the client reconnect into read-only sessions. Once the
    database is writable again the client's next start works and the worker finishes the
    run, with no restart of either."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    worker = await start_worker(workflows=[fault_flows.paused], activities=[fault_flows.pause],
                                workflow_concurrency=1)
    async with await Client.connect(db_url, max_size=2) as client:
        assert await (await client.start(fault_flows.paused, 0.01)).result(timeout=30) == 0.01

        query(pg_admin_url, f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
        query(pg_admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
              (dbname,))
        # Each pool is at its largest when the episode ends, every session in it opened during
        # the episode (so no session opened later can rescue it).
        await wait_until(fill(worker._pool), timeout=30, what="the worker's pool to fill with read-only sessions")
        await wait_until(fill(client.pool), timeout=30, what="the client's pool to fill with read-only sessions")
        query(pg_admin_url, f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')

        assert await (await client.start(fault_flows.paused, 0.02)).result(timeout=30) == 0.02


def test_worker_clock_ahead_retries_inside_its_budget(db_url: str, tmp_path: Path) -> None:
    """A worker whose host clock runs an hour ahead retries a failed attempt 0.2 s later,
    inside a 600 s schedule-to-close budget: the deadline is the database's, so is the
    clock it is compared with."""
    fleet = Fleet(db_url, tmp_path, module="fault_flows",
                  env={"PYTHONPATH": str(HERE / "skewed_clock"), "CAIRN_TEST_CLOCK_SKEW": str(HOUR)})

    async def run() -> dict[str, float]:
        async with await Client.connect(db_url) as client:
            handle = await client.start(fault_flows.retried_in_budget, "skewed")
            return await handle.result(timeout=60)  # type: ignore[no-any-return]

    try:
        fleet.start("ahead")
        out = asyncio.run(run())
    finally:
        fleet.close()
    assert out["attempt"] == 2, fleet.tails()
    # The worker's clocks really were an hour ahead of this process's.
    assert out["time"] - time.time() > HOUR - 60
    assert out["now"] - time.time() > HOUR - 60


def test_breaker_opened_for_seconds_on_a_host_an_hour_ahead(db_url: str) -> None:
    """`cairn breakers open NAME --for 90` from a host an hour ahead opens it for 90 s of
    database time, not an hour and a half."""
    async def make() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await breakers.admit(conn, "payments", breakers.BreakerConfig())

    asyncio.run(make())
    env = {**os.environ, "PYTHONPATH": str(HERE / "skewed_clock"), "CAIRN_TEST_CLOCK_SKEW": str(HOUR)}
    out = subprocess.run([CAIRN, "--database-url", db_url, "breakers", "open", "payments", "--for", "90"],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    (left,), = query(db_url, "SELECT extract(epoch FROM open_until - now()) FROM cairn.breakers")
    assert 80 < left <= 91


# ---------------------------------------------------------------- the client and lost connections


def cut(admin_url: str, dbname: str) -> int:
    """pg_terminate_backend of every session on the database (the client's, the worker's)."""
    (n,), = query(admin_url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                  (dbname,))
    return int(n)


async def test_client_calls_after_its_sessions_are_terminated(db_url: str, pg_admin_url: str,
                                                              start_worker: Callable[..., Any]) -> None:
    """Every session is terminated before each call: each call still works, on a fresh
    connection (a read after its connection is lost, a write before it is sent)."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    await start_worker(workflows=[fault_flows.paused], activities=[fault_flows.pause])
    async with await Client.connect(db_url, max_size=4) as client:
        done = await client.start(fault_flows.paused, 0.01)
        assert await done.result(timeout=30) == 0.01
        await asyncio.gather(*(client.list() for _ in range(4)))  # the pool holds several sessions

        assert cut(pg_admin_url, dbname) >= 2
        assert [r["run_id"] for r in await client.list()] == [done.run_id]
        cut(pg_admin_url, dbname)
        assert (await done.describe()).status == "completed"
        cut(pg_admin_url, dbname)
        assert (await done.history())[0].type == "WorkflowStarted"
        cut(pg_admin_url, dbname)
        assert await client.get_handle(done.workflow_id).result(timeout=30) == 0.01
        cut(pg_admin_url, dbname)
        handle = await client.start(fault_flows.paused, 1.0)
        cut(pg_admin_url, dbname)
        await handle.signal("nudge", 1)
        cut(pg_admin_url, dbname)
        assert await handle.result(timeout=30) == 1.0
    assert query(db_url, "SELECT count(*) FROM cairn.history WHERE type = 'SignalReceived'") == [(1,)]


async def test_a_start_whose_connection_is_lost_after_it_committed(db_url: str, client: Client,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection drops once, right after start_workflow committed: start() finds the run
    it made, and returns it (no second run, no WorkflowAlreadyStarted, no psycopg error)."""
    execute, lost = psycopg.AsyncCursor.execute, []

    async def lose_once(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        out = await execute(self, query, *args, **kwargs)
        if query == q("start_workflow") and not lost:
            lost.append(query)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return out

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", lose_once)
    handle = await client.start(fault_flows.paused, 0.01, id="lost-ack")
    assert lost
    assert query(db_url, "SELECT run_id::text FROM cairn.runs WHERE workflow_id = 'lost-ack'") == [(handle.run_id,)]


@pytest.mark.parametrize(("statement", "check"), [("signal_run", "look for it in `cairn history"),
                                                ("set_reset_from", "look for its new run")])
async def test_a_write_whose_connection_is_lost_says_its_outcome_is_unknown(
        db_url: str, client: Client, monkeypatch: pytest.MonkeyPatch, statement: str, check: str) -> None:
    """A signal (or an operator's retry) is not repeated blindly: a connection lost with it
    on its way is an OutcomeUnknown that says how to check."""
    handle = await client.start(fault_flows.paused, 0.01, id="unknown-outcome")  # no worker: stays open
    if statement == "set_reset_from":
        await handle.terminate("to retry it")
    execute = psycopg.AsyncCursor.execute

    async def lose(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        out = await execute(self, query, *args, **kwargs)
        if query == q(statement):
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return out

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", lose)
    write = handle.signal("nudge", 1) if statement == "signal_run" else handle.retry()
    with pytest.raises(OutcomeUnknown, match=f"may or may not have taken effect: {re.escape(check)}"):
        await write
    monkeypatch.undo()
    if statement == "signal_run":  # it had been delivered
        assert query(db_url, "SELECT count(*) FROM cairn.inbox WHERE type = 'SignalReceived'") == [(1,)]


def test_result_waits_through_a_postgres_restart(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    """pg_ctl stop -m immediate, then start, while result() waits on a run whose activity a
    worker subprocess is running: result() keeps waiting and returns the result."""
    pg = private_pg
    with db.connect_sync(pg.url()) as c:
        c.execute("CREATE DATABASE faults")
    url = pg.url("faults")
    db.migrate(url)
    fleet = Fleet(url, tmp_path, module="fault_flows")

    async def run() -> None:
        async with await Client.connect(url) as client:
            handle = await client.start(fault_flows.paused, 3.0)
            waiting = asyncio.create_task(handle.result(timeout=120))
            await wait_until(lambda: asyncio.to_thread(lambda: query(
                url, "SELECT count(*) FROM cairn.activity_tasks WHERE lease_owner IS NOT NULL")[0][0]),
                timeout=30, what="the activity to start")
            await asyncio.to_thread(pg.crash)
            await asyncio.to_thread(pg.start)
            assert await waiting == 3.0
            assert (await handle.describe()).status == "completed"

    try:
        fleet.start("w")
        asyncio.run(run())
    finally:
        fleet.close()
