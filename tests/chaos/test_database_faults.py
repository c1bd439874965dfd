"""The database misbehaving under workers and a client: a read-only episode (issue 15, item
12) and a worker whose clock is wrong (item 13)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import fault_flows
import psycopg
import pytest
from chaos_support import CAIRN, HERE, Fleet, query

from cairn import Client, breakers

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

HOUR = 3600.0


async def poll(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Awaits ``check()`` until truthy, letting in-process workers run meanwhile."""
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def fill(pool: Any) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`poll`: takes every connection the pool may hold at once, and says
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
    session is cut; the worker reconnects into read-only sessions. Once the database is
    writable again the worker finishes runs started after that, with no restart."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    worker = await start_worker(workflows=[fault_flows.paused], activities=[fault_flows.pause],
                                workflow_concurrency=1)
    async with await Client.connect(db_url) as client:
        assert await (await client.start(fault_flows.paused, 0.01)).result(timeout=30) == 0.01

    query(pg_admin_url, f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    query(pg_admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
    # A busy worker's engine pool is at its largest when the episode ends: every session it
    # may hold was opened during the episode (so no session opened later can rescue it).
    await poll("the worker's pool to fill with read-only sessions", fill(worker._pool))
    query(pg_admin_url, f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')

    async with await Client.connect(db_url) as client:
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
