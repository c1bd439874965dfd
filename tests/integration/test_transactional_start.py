"""Transactional start: client.start(..., conn=conn) commits or rolls back together with the
caller's own writes (the transactional outbox)."""

from __future__ import annotations

import psycopg
import pytest

from cairn import WorkflowAlreadyStarted, activity, workflow
from support import run_status


@activity.defn
async def ship(order_id: str) -> str:
    return f"shipped {order_id}"


@workflow.defn
async def fulfil(order_id: str) -> str:
    return await workflow.execute_activity(ship, order_id, start_to_close_timeout=10)


def _cairn_rows(sql) -> int:
    return sum(sql(f"SELECT count(*) FROM cairn.{t}")[0][0]
               for t in ("runs", "history", "workflow_tasks", "activity_tasks", "timers", "inbox"))


@pytest.fixture
def orders_table(sql):
    sql("CREATE TABLE public.orders (id text PRIMARY KEY, total numeric NOT NULL)")
    return "public.orders"


async def test_commit_starts_the_run(client, start_worker, sql, db_url, orders_table):
    await start_worker(workflows=[fulfil], activities=[ship])
    async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
        await conn.execute("INSERT INTO public.orders (id, total) VALUES (%s, %s)", ("o-1", 12))
        handle = await client.start(fulfil, "o-1", id="fulfil-o-1", conn=conn)
        # Not visible to anyone else (workers included) before the commit.
        assert sql("SELECT count(*) FROM cairn.runs") == [(0,)]
        assert sql("SELECT count(*) FROM public.orders") == [(0,)]
    assert sql("SELECT id FROM public.orders") == [("o-1",)]
    assert sql("SELECT workflow_id FROM cairn.runs") == [("fulfil-o-1",)]
    assert await handle.result(timeout=20) == "shipped o-1"
    assert run_status(sql, handle.run_id) == "completed"


async def test_rollback_leaves_nothing(client, start_worker, sql, db_url, orders_table):
    worker = await start_worker(workflows=[fulfil], activities=[ship])

    class Abort(Exception):
        pass

    async def place_order_then_fail(conn: psycopg.AsyncConnection) -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO public.orders (id, total) VALUES (%s, %s)", ("o-2", 5))
            await client.start(fulfil, "o-2", id="fulfil-o-2", conn=conn)
            raise Abort

    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        with pytest.raises(Abort):
            await place_order_then_fail(conn)
    assert sql("SELECT count(*) FROM public.orders") == [(0,)]
    assert _cairn_rows(sql) == 0
    # The worker never saw anything to do (and the id is free for a real start).
    assert worker.stats.workflow_tasks == 0
    handle = await client.start(fulfil, "o-2", id="fulfil-o-2")
    assert await handle.result(timeout=20) == "shipped o-2"


async def test_explicit_commit_and_rollback_without_transaction_block(client, start_worker, sql, db_url,
                                                                      orders_table):
    await start_worker(workflows=[fulfil], activities=[ship])
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await conn.execute("INSERT INTO public.orders (id, total) VALUES ('o-3', 1)")
        await client.start(fulfil, "o-3", id="fulfil-o-3", conn=conn)
        await conn.rollback()
        assert _cairn_rows(sql) == 0
        await conn.execute("INSERT INTO public.orders (id, total) VALUES ('o-4', 1)")
        handle = await client.start(fulfil, "o-4", id="fulfil-o-4", conn=conn)
        await conn.commit()
    assert sql("SELECT id FROM public.orders") == [("o-4",)]
    assert sql("SELECT workflow_id FROM cairn.runs") == [("fulfil-o-4",)]
    assert await handle.result(timeout=20) == "shipped o-4"


async def test_conflict_inside_caller_transaction_keeps_it_usable(client, sql, db_url, orders_table):
    first = await client.start(fulfil, "o-5", id="fulfil-o-5")  # no worker: stays open
    async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
        await conn.execute("INSERT INTO public.orders (id, total) VALUES ('o-5', 1)")
        with pytest.raises(WorkflowAlreadyStarted):
            await client.start(fulfil, "o-5", id="fulfil-o-5", conn=conn)
        same = await client.start(fulfil, "o-5", id="fulfil-o-5", conn=conn, id_conflict="use_existing")
        assert same.run_id == first.run_id
    # The caller's transaction was not aborted by the conflict: its write committed.
    assert sql("SELECT id FROM public.orders") == [("o-5",)]
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]
