"""cairn.testing's in-process workers: ``worker()`` runs a workflow end to end and stops its
worker at the block's end; ``Workers`` starts several, reports a worker that cannot start,
and raises a worker's error at the end unless told not to."""

from __future__ import annotations

import pytest

from cairn import activity, testing, workflow
from cairn.errors import SchemaNotReadyError
from support import events
from support.waiting import wait_until


@activity.defn
async def shout(text: str) -> str:
    return text.upper()


@workflow.defn
async def loud(text: str) -> str:
    return await workflow.execute_activity(shout, text, start_to_close_timeout=10)


async def test_worker_runs_a_workflow_end_to_end_and_returns_a_client(db_url, sql):
    async with testing.worker(db_url, workflows=[loud], activities=[shout]) as client:
        handle = await client.start(loud, "hi", id="loud-1")
        assert await handle.result(timeout=30) == "HI"
    assert [t for _, t, _ in events(sql, str(handle.run_id))][-1] == "WorkflowCompleted"
    # Both are gone after the block: no session of this process is left on the database (a
    # closed connection's backend leaves pg_stat_activity a moment after the close).
    await wait_until(lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND pid <> pg_backend_pid()") == [(0,)], timeout=5)


async def test_workers_start_several_and_stop_them_together(db_url):
    async with testing.Workers(db_url) as workers:
        first = await workers.start(workflows=[loud], identity="w1")
        second = await workers.start(activities=[shout], identity="w2", poll_interval=0.5)
        assert workers.workers == [first, second]
        assert (first.poll_interval, second.poll_interval) == (0.2, 0.5)  # the test default, and an option
        assert first.lease_seconds == testing.TEST_WORKER_OPTIONS["lease_seconds"]
    assert workers.workers == []


async def test_a_worker_that_cannot_start_raises_from_start(empty_db_url):
    workers = testing.Workers(empty_db_url)
    with pytest.raises(SchemaNotReadyError):
        await workers.start(workflows=[loud])
    await workers.stop()
