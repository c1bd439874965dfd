"""cairn.history is append-only: UPDATE and DELETE are refused by the database itself."""

from __future__ import annotations

import psycopg
import pytest

from cairn import workflow
from support import types_of


@workflow.defn
async def noop() -> None:
    return None


REFUSED = [
    "UPDATE cairn.history SET type = 'Tampered'",
    "UPDATE cairn.history SET data = '{}' WHERE seq = 1",
    "DELETE FROM cairn.history",
    "DELETE FROM cairn.history WHERE seq = 1",
    "UPDATE cairn.history SET type = 'x' WHERE false",  # statement-level: even for no rows
    "DELETE FROM cairn.history WHERE false",
]


async def test_history_refuses_update_and_delete(client, sql, db_url):
    handle = await client.start(noop, id="append-only")  # no worker: history is [WorkflowStarted]
    before = sql("SELECT run_id, seq, type, data, at FROM cairn.history ORDER BY seq")
    assert len(before) == 1

    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in REFUSED:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
            # Inside a transaction too: the error aborts it and nothing changes.
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
    assert sql("SELECT run_id, seq, type, data, at FROM cairn.history ORDER BY seq") == before
    assert types_of(sql, handle.run_id) == ["WorkflowStarted"]


async def test_history_still_accepts_appends(client, sql, db_url):
    handle = await client.start(noop, id="append-ok")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO cairn.history (run_id, seq, type) VALUES (%s, 2, 'WorkflowTaskStarted')",
                     (handle.run_id,))
        # The primary key refuses a second writer of the same seq.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO cairn.history (run_id, seq, type) VALUES (%s, 2, 'Other')",
                         (handle.run_id,))
    assert types_of(sql, handle.run_id) == ["WorkflowStarted", "WorkflowTaskStarted"]
