"""Helpers shared by the integration tests: bounded polling and history reads."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from cairn import Worker


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05,
                     what: str = "condition") -> Any:
    """Polls ``predicate`` (sync or async) until it returns something truthy; bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def events(sql: Callable[..., list[tuple[Any, ...]]], run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    """A run's history as (seq, type, data), in order."""
    return [(s, t, d) for s, t, d in sql(
        "SELECT seq, type, data FROM cairn.history WHERE run_id = %s ORDER BY seq", (run_id,))]


def types_of(sql: Callable[..., list[tuple[Any, ...]]], run_id: str) -> list[str]:
    return [t for _, t, _ in events(sql, run_id)]


def run_status(sql: Callable[..., list[tuple[Any, ...]]], run_id: str) -> str:
    rows = sql("SELECT status FROM cairn.runs WHERE run_id = %s", (run_id,))
    assert rows, f"no run {run_id}"
    return str(rows[0][0])


def outcomes_per_activity(sql: Callable[..., list[tuple[Any, ...]]],
                          run_id: str | None = None) -> dict[tuple[str, int], int]:
    """(run_id, activity seq) -> number of ActivityCompleted/ActivityFailed events, for every
    scheduled activity (0 when it has none)."""
    rows = sql(
        """
        SELECT s.run_id::text, s.seq,
               (SELECT count(*) FROM cairn.history o
                WHERE o.run_id = s.run_id AND o.type IN ('ActivityCompleted', 'ActivityFailed')
                  AND (o.data ->> 'activity_seq')::int = s.seq)
        FROM cairn.history s
        WHERE s.type = 'ActivityScheduled' AND (%(run)s::uuid IS NULL OR s.run_id = %(run)s::uuid)
        """,
        {"run": run_id},
    )
    return {(r, s): int(n) for r, s, n in rows}


@contextlib.asynccontextmanager
async def running_worker(url: str, **kwargs: Any) -> AsyncIterator[Worker]:
    """A worker that runs for the ``async with`` block and is stopped (drained) at its end."""
    kwargs.setdefault("poll_interval", 0.2)
    kwargs.setdefault("lease_seconds", 5.0)
    async with Worker(url, **kwargs) as worker:
        yield worker


# ---------------------------------------------------------------- the CLI in-process


def cairn(db_url: str, *args: str) -> Any:
    """Runs ``cairn --database-url DB_URL ARGS`` through click's runner."""
    from click.testing import CliRunner

    from cairn.cli import main

    return CliRunner().invoke(main, ["--database-url", db_url, *args])


def ok(ran: Any) -> str:
    """Asserts a CLI run succeeded; returns its stdout."""
    assert ran.exit_code == 0, f"exit {ran.exit_code}\nstdout: {ran.stdout}\nstderr: {ran.stderr}"
    return str(ran.stdout)


def bad_input(ran: Any, *fragments: str) -> None:
    """Asserts a CLI run was refused as bad input (exit 2, a message, no traceback)."""
    assert ran.exit_code == 2, f"exit {ran.exit_code}\nstdout: {ran.stdout}\nstderr: {ran.stderr}"
    assert "Traceback" not in ran.stderr
    for fragment in fragments:
        assert fragment in ran.stderr, ran.stderr
