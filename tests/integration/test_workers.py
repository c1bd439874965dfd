"""Workers you can see, in-process (issue 18, item 6): a worker's row shows its slots in
use and counters as it works, the listing filters by queue, a graceful stop marks the row
after the drain, and describe names the worker that served a type last. The process-level
behaviour (kill -9, the CLI, the web view) is tests/acceptance/test_workers_processes.py."""

from __future__ import annotations

import asyncio

import pytest

from cairn import Worker, activity, workflow
from cairn.errors import ConfigurationError
from cairn.sync import SyncClient
from support import wait_until

HEARTBEAT = 0.1  # seconds

gate = asyncio.Event()


@activity.defn
async def held() -> str:
    await gate.wait()
    return "released"


@workflow.defn
async def holds() -> str:
    return await workflow.execute_activity(held, start_to_close_timeout=60)


@workflow.defn
async def waits_for_a_signal() -> str:
    await workflow.wait_condition(lambda: False)
    return "never"


async def one(client, identity):
    rows = await client.list_workers(include_inactive=True)
    return next((w for w in rows if w.identity == identity), None)


async def test_a_workers_row_shows_its_slots_in_use_and_counters(client, start_worker):
    gate.clear()
    w = await start_worker(workflows=[holds], activities=[held], identity="busy", activity_concurrency=3,
                           heartbeat_interval=HEARTBEAT)
    [row] = await client.list_workers()
    assert (row.identity, row.status, row.workflow_slots, row.activity_slots) == ("busy", "live", 4, 3)
    assert (row.workflow_types, row.activity_types, row.queues) == (["holds"], ["held"], ["default"])
    assert row.started_at <= row.heartbeat_at < row.live_until

    handle = await client.start(holds, id="held-1")
    await wait_until(lambda: _used(client, "busy", 1), what="the attempt to show as a slot in use")
    gate.set()
    assert await handle.result(timeout=20) == "released"
    await wait_until(lambda: _done(client, "busy"), what="the counters and free slots to show")
    assert w.stats.activities_completed == 1


async def _used(client, identity, n):
    row = await one(client, identity)
    return row is not None and row.activity_slots_used == n


async def _done(client, identity):
    row = await one(client, identity)
    return (row.activity_slots_used, row.activities_completed, row.workflow_tasks >= 2) == (0, 1, True)


async def test_the_listing_by_queue_and_with_the_stopped_ones(client, db_url, start_worker):
    await start_worker(workflows=[holds], activities=[held], identity="on-q1", queues=["q1"],
                       heartbeat_interval=HEARTBEAT)
    await start_worker(activities=[held], identity="on-q2", queues=["q2", "q3"], heartbeat_interval=HEARTBEAT)
    assert [w.identity for w in await client.list_workers()] == ["on-q1", "on-q2"]
    assert [w.identity for w in await client.list_workers(queue="q3")] == ["on-q2"]
    assert [w.workflow_slots for w in await client.list_workers(queue="q2")] == [0]  # no workflows: no pollers
    with SyncClient(db_url) as sync:
        assert [w.identity for w in sync.list_workers(queue="q1")] == ["on-q1"]
        assert sync.list_workers(queue="q1")[0].to_json()["status"] == "live"


async def test_a_graceful_stop_marks_the_row_and_describe_names_the_last_worker(client, db_url):
    w = Worker(db_url, workflows=[waits_for_a_signal], identity="leaving", heartbeat_interval=HEARTBEAT,
               poll_interval=0.2)
    async with w:
        handle = await client.start(waits_for_a_signal, id="left-behind")
        await wait_until(lambda: _has_run(handle), what="the run's first task")
        assert (await handle.describe()).unserved == []
    assert await client.list_workers() == []
    [row] = await client.list_workers(include_inactive=True)
    assert (row.identity, row.status, row.workflow_slots_used) == ("leaving", "stopped", 0)
    assert row.stopped_at is not None
    assert row.workflow_tasks >= 1

    [u] = (await handle.describe()).unserved
    assert u["message"].startswith(f"no live worker serves workflow type 'waits_for_a_signal' on queue 'default' "
                                   f"(last served by worker 'leaving' at {row.host}:{row.pid}, stopped ")
    assert (u["last_worker"], u["last_heartbeat"]) == ("leaving", row.heartbeat_at)

    # A worker of the same identity takes the row over, live again.
    async with Worker(db_url, workflows=[waits_for_a_signal], identity="leaving", heartbeat_interval=HEARTBEAT):
        [again] = await client.list_workers()
        assert (again.identity, again.status, again.stopped_at) == ("leaving", "live", None)
        assert again.started_at > row.started_at
        assert (await handle.describe()).unserved == []


async def _has_run(handle):
    d = await handle.describe()
    return d.workflow_task is None and d.history_length >= 2  # WorkflowStarted, WorkflowTaskStarted


@pytest.mark.parametrize("interval", [0, -1, float("nan"), 3600])
def test_a_heartbeat_interval_out_of_range_is_refused(interval):
    with pytest.raises(ConfigurationError, match="heartbeat_interval"):
        Worker(workflows=[holds], heartbeat_interval=interval)


async def test_the_web_view_lists_the_workers_escaped(db_url, start_worker):
    import httpx

    from .ui_support import ui_server

    await start_worker(workflows=[holds], identity='<script>x</script>"', queues=["q<1>"],
                       heartbeat_interval=HEARTBEAT)
    async with ui_server(db_url) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        page = await http.get("/workers")
        by_queue = await http.get("/workers", params={"queue": "elsewhere"})
        api = await http.get("/api/workers", params={"queue": "q<1>"})
    assert page.status_code == by_queue.status_code == api.status_code == 200
    assert '<td class="id">&lt;script&gt;x&lt;/script&gt;&quot;</td>' in page.text
    assert "<script>" not in page.text
    assert "<td>q&lt;1&gt;</td>" in page.text
    assert 'id="empty">No live workers.' in by_queue.text
    [w] = api.json()["workers"]
    assert (w["identity"], w["status"], w["workflow_types"]) == ('<script>x</script>"', "live", ["holds"])
