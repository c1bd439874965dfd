"""A query that arrives before its run's first workflow task waits for that task, as in
Temporal (issue 15, item 6): real Postgres, real workers.

The first task is held back deterministically by locking the run's workflow-task row in a
transaction of the test's own: workers claim tasks with SKIP LOCKED, so they pass it by
until the test commits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
import pytest

from cairn import QueryFailed, QueryTimeout, workflow
from support import wait_until

T = 10


@workflow.defn
async def greeter(name: str) -> str:
    greeting = f"hello {name}"
    workflow.set_query_handler("greeting", lambda: greeting)
    await workflow.wait_signal("done")
    return greeting


@contextlib.asynccontextmanager
async def first_task_held(db_url: str, run_id: str) -> AsyncIterator[None]:
    """Holds the run's workflow-task row locked (no worker can claim it) for the block."""
    async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
        cur = await conn.execute("SELECT run_id FROM cairn.workflow_tasks WHERE run_id = %s FOR UPDATE", (run_id,))
        assert await cur.fetchone() is not None
        yield


async def test_a_query_before_the_first_task_is_answered_after_it(client, db_url, start_worker, sql):
    handle = await client.start(greeter, "ada", id="early-query")
    async with first_task_held(db_url, handle.run_id):
        # Polls 30 s apart: the task is claimed on a NOTIFY, the query on the first task's wake-up.
        worker = await start_worker(workflows=[greeter], poll_interval=30.0)
        asking = asyncio.create_task(handle.query("greeting", timeout=T))
        # The worker saw the request and left it for the first task (the old code answered
        # at once, from a replay of WorkflowStarted alone: UnknownQuery, known: none).
        await wait_until(lambda: asking.done() or worker._answers.waiting,
                         what="the worker to put the query aside")
        assert not asking.done(), asking.result()
        assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s", (handle.run_id,)) == [(1,)]
    await handle.signal("noise")  # its NOTIFY gets the first task claimed
    assert await asking == "hello ada"
    assert sql("SELECT count(*) FROM cairn.query_requests") == [(0,)]
    # After the first task, an unknown name still fails at once, naming the known ones.
    with pytest.raises(QueryFailed, match=r"known: greeting\)") as info:
        await handle.query("nope", timeout=T)
    assert info.value.type == "UnknownQuery"
    assert not worker._answers.waiting


async def test_a_query_sent_before_any_worker_runs_gets_the_answer(client, start_worker, sql):
    handle = await client.start(greeter, "bo", id="early-query-no-worker")
    asking = asyncio.create_task(handle.query("greeting", timeout=T))
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.query_requests") == [(1,)], what="the request")
    await start_worker(workflows=[greeter])
    assert await asking == "hello bo"


async def test_a_query_times_out_clearly_when_the_first_task_never_comes(client, db_url, start_worker, sql):
    handle = await client.start(greeter, "cy", id="early-query-stuck")
    async with first_task_held(db_url, handle.run_id):
        await start_worker(workflows=[greeter])
        with pytest.raises(QueryTimeout, match=f"its run {handle.run_id} has not completed its first workflow "
                                               r"task.*queue 'default' with workflow type 'greeter'"):
            await handle.query("greeting", timeout=1.0)
    assert sql("SELECT count(*) FROM cairn.query_requests") == [(0,)]
