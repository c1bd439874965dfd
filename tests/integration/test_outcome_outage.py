"""A worker writes an attempt's outcome through a database outage (issue 14 under faults).

The defect: the write was tried 5 times over 3 s; a Postgres restart that took longer lost
the outcome, the lease lapsed, and the reaper ran the finished attempt again (an LLM call
answered during the restart was paid twice). Now the write is tried again for up to a
lease, after which another worker may own the attempt (and the token fences a late write).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from cairn import Worker, activity
from cairn.errors import DatabaseUnavailable
from cairn.store import transactions

OUTAGE_SECONDS = 4.0  # longer than the old 3 s of tries, shorter than the default 30 s lease


class AwayFor:
    """A pool whose database is away (every checkout refused) for ``seconds``, then back."""

    def __init__(self, pool: AsyncConnectionPool, seconds: float) -> None:
        self.pool, self.until, self.refused = pool, time.monotonic() + seconds, 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        if time.monotonic() < self.until:
            self.refused += 1
            raise psycopg.OperationalError("connection refused: the database system is starting up")
        async with self.pool.connection() as conn:
            yield conn


@activity.defn
async def noop() -> None:
    """Only so that a worker can be built."""


async def select_one(pool: Any) -> bool:
    """A write's stand-in: one statement on a connection of ``pool`` (errors translated, as
    the store's writes do)."""
    async with transactions.connection(pool) as conn:
        return await (await conn.execute("SELECT 1")).fetchone() is not None


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True})
    await pool.open(wait=True)
    yield pool
    await pool.close()


async def test_an_outcome_write_outlasts_a_restart_shorter_than_a_lease(db_url: str, pool: AsyncConnectionPool):
    worker = Worker(db_url, activities=[noop])
    away = AwayFor(pool, OUTAGE_SECONDS)
    began = time.monotonic()
    assert await worker._activities._outlasting_outages(lambda: select_one(away)) is True
    assert time.monotonic() - began >= OUTAGE_SECONDS
    assert away.refused > 1, "tried again through the outage"


async def test_an_outcome_write_gives_up_after_a_lease(db_url: str, pool: AsyncConnectionPool):
    """Past the lease the reaper may have handed the attempt on: the worker stops trying."""
    worker = Worker(db_url, activities=[noop], lease_seconds=1.0)
    away = AwayFor(pool, 60.0)
    began = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await worker._activities._outlasting_outages(lambda: select_one(away))
    assert time.monotonic() - began < 1.0 + 1.0
