"""Reading a test database: one query, a run's history and status, values with their
payload-store references resolved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

CONNECT_TIMEOUT_SECONDS = 5  # a server that does not answer fails the test instead of hanging it

Sql = Callable[..., list[tuple[Any, ...]]]  # the ``sql`` fixture: ``sql(statement, params)``


def query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Runs one statement on its own connection (autocommit) and returns its rows, if any."""
    with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def resolved(url: str, data: Any) -> Any:
    """``data`` read from the database (history, a task's input) with every payload-store
    reference in it replaced by its value, as the engine reads it."""
    from cairn.store.payloads import resolve_sync

    with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
        return resolve_sync(conn, data)


def events(sql: Sql, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    """A run's history as (seq, type, data), in order."""
    return [(s, t, d) for s, t, d in sql(
        "SELECT seq, type, data FROM cairn.history WHERE run_id = %s ORDER BY seq", (run_id,))]


def types_of(sql: Sql, run_id: str) -> list[str]:
    return [t for _, t, _ in events(sql, run_id)]


def run_status(sql: Sql, run_id: str) -> str:
    rows = sql("SELECT status FROM cairn.runs WHERE run_id = %s", (run_id,))
    assert rows, f"no run {run_id}"
    return str(rows[0][0])


def outcomes_per_activity(sql: Sql, run_id: str | None = None) -> dict[tuple[str, int], int]:
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
