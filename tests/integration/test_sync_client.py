"""The sync facade: start, wait, and a transactional start on a sync connection."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

from cairn import WorkflowIdReuseRefused, activity, workflow
from cairn.sync import SyncClient


@activity.defn
def add_one(x: int) -> int:
    return x + 1


@workflow.defn
async def plus_one(x: int) -> int:
    return await workflow.execute_activity(add_one, x, start_to_close_timeout=timedelta(seconds=10))


async def test_sync_client_start_and_outbox(db_url, start_worker, sql):
    await start_worker(workflows=[plus_one], activities=[add_one])
    sql("CREATE TABLE orders (id text PRIMARY KEY)")

    def script() -> tuple[int, int]:
        with SyncClient(db_url) as client:
            first = client.start(plus_one, 1, id="sync-1").result(timeout=20)
            with psycopg.connect(db_url) as conn:  # a plain sync app connection
                with conn.transaction():
                    conn.execute("INSERT INTO orders VALUES ('o-2')")
                    handle = client.start(plus_one, 41, id="sync-2", conn=conn)
                with conn.transaction():
                    conn.execute("INSERT INTO orders VALUES ('o-3')")
                    client.start(plus_one, 7, id="sync-3", conn=conn)
                    raise psycopg.Rollback()
            return first, handle.result(timeout=20)

    # The facade blocks, so run it off the test's event loop (where the worker runs).
    assert await asyncio.to_thread(script) == (2, 42)
    assert sql("SELECT id FROM orders ORDER BY id") == [("o-2",)]
    assert sql("SELECT workflow_id FROM cairn.runs ORDER BY workflow_id") == [("sync-1",), ("sync-2",)]


async def test_sync_client_id_reuse_policy_in_an_outbox_start(db_url, start_worker, sql):
    await start_worker(workflows=[plus_one], activities=[add_one])

    def script() -> str:
        with SyncClient(db_url) as client:
            client.start(plus_one, 1, id="sync-reuse").result(timeout=20)
            with psycopg.connect(db_url) as conn, conn.transaction():
                with pytest.raises(WorkflowIdReuseRefused) as refused:
                    client.start(plus_one, 2, id="sync-reuse", conn=conn, id_reuse_policy="reject_duplicate")
                return refused.value.status

    assert await asyncio.to_thread(script) == "completed"
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'sync-reuse'") == [(1,)]
