"""Signals, signal-with-start, wait conditions and queries on real Postgres, real workers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cairn import (
    Client,
    InputValidationError,
    QueryFailed,
    QueryTimeout,
    WorkflowClosed,
    WorkflowNotFound,
    activity,
    workflow,
)
from cairn.store.messages import signal_with_start
from cairn.sync import SyncClient
from support import events, run_status, running_worker, types_of, wait_until

T = 10


@activity.defn
async def shout(text: str) -> str:
    return text.upper()


@workflow.defn
async def collector(n: int) -> list[Any]:
    """Waits for "go", then takes n "item" signals (those sent earlier were buffered)."""
    await workflow.wait_signal("go")
    return [await workflow.wait_signal("item") for _ in range(n)]


@workflow.defn
async def waits_briefly(seconds: float) -> Any:
    try:
        return await workflow.wait_signal("answer", timeout=seconds)
    except TimeoutError:
        return "timed out"


@workflow.defn
async def mailbox() -> dict[str, Any]:
    """A handler for "add" (sync) and "loud" (async, runs an activity); "done" is waited for;
    queries read the state; a condition waits until the async handler has finished."""
    state: dict[str, Any] = {"added": [], "loud": []}

    async def loud(text: str) -> None:
        state["loud"].append(await workflow.execute_activity(shout, text, start_to_close_timeout=T))

    workflow.set_signal_handler("add", state["added"].append)
    workflow.set_signal_handler("loud", loud)
    workflow.set_query_handler("state", lambda: state)
    workflow.set_query_handler("added_plus", lambda extra: [*state["added"], extra])
    workflow.set_query_handler("boom", lambda: 1 / 0)
    workflow.set_query_handler("sneaky", lambda: workflow.start_activity(shout, "x", start_to_close_timeout=T))
    done = await workflow.wait_signal("done")
    await workflow.wait_condition(lambda: len(state["loud"]) == done)
    return state


@workflow.defn
async def gate(timeout: float | None) -> str:
    state = {"open": False}
    workflow.set_signal_handler("open", lambda _: state.__setitem__("open", True))
    try:
        await workflow.wait_condition(lambda: state["open"], timeout=timeout)
    except TimeoutError:
        return "still closed"
    return "opened"


def _inbox(sql, run_id: str) -> int:
    return int(sql("SELECT count(*) FROM cairn.inbox WHERE run_id = %s", (run_id,))[0][0])


async def _settled(sql, run_id: str) -> None:
    """Waits until the run has no pending workflow task (its code is blocked, all recorded)."""
    await wait_until(lambda: not sql("SELECT 1 FROM cairn.workflow_tasks WHERE run_id = %s", (run_id,))
                     and not _inbox(sql, run_id), what="the run to settle")


# ---------------------------------------------------------------- signals


async def test_signals_are_recorded_buffered_and_consumed_in_order(client, start_worker, sql):
    await start_worker(workflows=[collector])
    handle = await client.start(collector, 3, id="collector-1")
    for i in (1, 2, 3):
        await handle.signal("item", {"i": i})
    await client.signal("collector-1", "go")
    assert await handle.result(timeout=T) == [{"i": 1}, {"i": 2}, {"i": 3}]
    received = [d for _, t, d in events(sql, handle.run_id) if t == "SignalReceived"]
    assert received == [{"name": "item", "payload": {"i": 1}}, {"name": "item", "payload": {"i": 2}},
                        {"name": "item", "payload": {"i": 3}}, {"name": "go", "payload": None}]


async def test_wait_signal_timeout_is_a_durable_timer(client, start_worker, sql):
    await start_worker(workflows=[waits_briefly])
    handle = await client.start(waits_briefly, 0.3, id="brief-1")
    assert await handle.result(timeout=T) == "timed out"
    assert [t for t in types_of(sql, handle.run_id) if t != "WorkflowTaskStarted"] == [
        "WorkflowStarted", "TimerStarted", "TimerFired", "WorkflowCompleted"]
    handle = await client.start(waits_briefly, 600, id="brief-2")
    await _settled(sql, handle.run_id)
    await handle.signal("answer", 42)
    assert await handle.result(timeout=T) == 42
    assert [t for t in types_of(sql, handle.run_id) if t != "WorkflowTaskStarted"] == [
        "WorkflowStarted", "TimerStarted", "SignalReceived", "TimerCancelled", "WorkflowCompleted"]


async def test_handlers_take_their_signals_and_wait_signal_the_rest(client, start_worker, sql):
    await start_worker(workflows=[mailbox], activities=[shout])
    handle = await client.start(mailbox, id="mailbox-1")
    await handle.signal("add", 1)
    await handle.signal("loud", "hey")
    await handle.signal("add", 2)
    await handle.signal("done", 1)
    assert await handle.result(timeout=T) == {"added": [1, 2], "loud": ["HEY"]}
    assert "ActivityScheduled" in types_of(sql, handle.run_id)


async def test_signal_to_unknown_or_closed_workflow_writes_nothing(client, start_worker, sql):
    with pytest.raises(WorkflowNotFound):
        await client.signal("no-such-workflow", "hello")
    await start_worker(workflows=[waits_briefly])
    handle = await client.start(waits_briefly, 0.1, id="closed-1")
    await handle.result(timeout=T)
    before = events(sql, handle.run_id)
    with pytest.raises(WorkflowClosed) as info:
        await client.signal("closed-1", "answer", 1)
    assert info.value.status == "completed"
    assert "closed" in str(info.value)
    assert "completed" in str(info.value)
    with pytest.raises(WorkflowClosed):
        await handle.signal("answer", 1)
    assert events(sql, handle.run_id) == before
    assert sql("SELECT count(*) FROM cairn.inbox") == [(0,)]
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(0,)]


@pytest.mark.parametrize(("name", "payload", "fragment"), [
    ("s", float("nan"), "nan"),
    ("s", {"text": "a\x00b"}, "NUL"),
    ("", None, "signal name"),
    ("x" * 201, None, "signal name"),
    ("bad\x00name", None, "NUL"),
])
async def test_bad_signal_input_writes_nothing(client, sql, name, payload, fragment):
    handle = await client.start(waits_briefly, 600, id="bad-input-1")
    before = events(sql, handle.run_id)
    with pytest.raises(InputValidationError, match=fragment):
        await handle.signal(name, payload)
    with pytest.raises(InputValidationError):  # checked before the workflow is even looked up
        await client.signal("no-such-workflow", name, payload)
    assert events(sql, handle.run_id) == before
    assert _inbox(sql, handle.run_id) == 0


# ---------------------------------------------------------------- signal-with-start


async def test_signal_with_start_puts_the_signal_in_the_first_task(client, start_worker, sql):
    handle = await client.signal_with_start(collector, 1, id="sws-1", signal="go")
    assert sql("SELECT type, data FROM cairn.inbox WHERE run_id = %s", (handle.run_id,)) == [
        ("SignalReceived", {"name": "go", "payload": None})]
    await start_worker(workflows=[collector])
    await _settled(sql, handle.run_id)
    assert types_of(sql, handle.run_id)[:3] == ["WorkflowStarted", "WorkflowTaskStarted", "SignalReceived"]
    # The run is open: a second signal-with-start signals it and starts nothing.
    again = await client.signal_with_start(collector, 1, id="sws-1", signal="item", signal_payload="x")
    assert again.run_id == handle.run_id
    assert await handle.result(timeout=T) == ["x"]
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]
    # Closed now: signal-with-start starts a new run.
    third = await client.signal_with_start(collector, 1, id="sws-1", signal="item", signal_payload="y")
    assert third.run_id != handle.run_id
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'sws-1'") == [(2,)]


async def test_concurrent_signal_with_starts_make_one_run(client, start_worker, sql):
    n = 6
    handles = await asyncio.gather(*(
        client.signal_with_start(collector, n - 1, id="sws-race", signal="go" if i == 0 else "item",
                                 signal_payload=i) for i in range(n)))
    assert len({h.run_id for h in handles}) == 1
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]
    await start_worker(workflows=[collector])
    assert sorted(await handles[0].result(timeout=T)) == list(range(1, n))


async def test_signal_with_start_waits_for_a_concurrent_start_and_signals_its_run(client, db_url, sql):
    """Deterministic: the first call's transaction is held open (run started and signalled,
    not committed) until pg_stat_activity shows the second waiting on its lock."""
    first = await Client.connect(db_url)
    try:
        params, _ = await first._start_params(collector, (1,), "sws-lock", "default", "use_existing")
        async with first.pool.connection() as c:
            async with c.transaction():
                run_id = await signal_with_start(c, params, {"name": "go", "payload": None})
                second = asyncio.create_task(client.signal_with_start(
                    collector, 1, id="sws-lock", signal="item", signal_payload="b"))
                await wait_until(lambda: sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")[0][0] >= 1, what="the second call to wait on the lock")
                assert not second.done()
            handle = await asyncio.wait_for(second, T)
    finally:
        await first.close()
    assert handle.run_id == run_id
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]
    assert [d["name"] for _, d in sql("SELECT type, data FROM cairn.inbox ORDER BY id")] == ["go", "item"]


async def test_signal_with_start_validates_before_writing(client, sql):
    with pytest.raises(InputValidationError):
        await client.signal_with_start(collector, 1, id="sws-bad", signal="go", signal_payload=float("inf"))
    with pytest.raises(InputValidationError):
        await client.signal_with_start(collector, "not an int", id="sws-bad", signal="go")
    with pytest.raises(InputValidationError):
        await client.signal_with_start(collector, 1, id="sws-bad", signal="")
    assert sql("SELECT count(*) FROM cairn.runs") == [(0,)]


# ---------------------------------------------------------------- wait conditions


async def test_wait_condition_woken_by_a_signal_handler(client, start_worker, sql):
    await start_worker(workflows=[gate])
    handle = await client.start(gate, None, id="gate-1")
    await _settled(sql, handle.run_id)
    await handle.signal("open")
    assert await handle.result(timeout=T) == "opened"
    timed = await client.start(gate, 0.3, id="gate-2")
    assert await timed.result(timeout=T) == "still closed"
    assert "TimerFired" in types_of(sql, timed.run_id)


# ---------------------------------------------------------------- queries


async def test_query_from_the_cached_instance_then_from_a_replay(client, db_url, start_worker, sql):
    async with running_worker(db_url, workflows=[mailbox], activities=[shout]) as first:
        handle = await client.start(mailbox, id="query-1")
        await handle.signal("add", 1)
        await handle.signal("add", 2)
        await wait_until(lambda: types_of(sql, handle.run_id).count("SignalReceived") == 2)
        await _settled(sql, handle.run_id)
        assert await handle.query("state") == {"added": [1, 2], "loud": []}
        assert await client.query("query-1", "added_plus", 3) == [1, 2, 3]
        assert (first.stats.queries_from_cache, first.stats.queries_replayed) == (2, 0)
    # The first worker is gone; a new one has no cached instance and replays.
    second = await start_worker(workflows=[mailbox], activities=[shout])
    assert await handle.query("state") == {"added": [1, 2], "loud": []}
    assert (second.stats.queries_from_cache, second.stats.queries_replayed) == (0, 1)
    assert sql("SELECT count(*) FROM cairn.query_requests") == [(0,)]
    # Nothing was recorded by answering.
    assert "ActivityScheduled" not in types_of(sql, handle.run_id)


async def test_query_a_closed_run(client, start_worker, sql):
    worker = await start_worker(workflows=[mailbox], activities=[shout])
    handle = await client.start(mailbox, id="query-closed")
    await handle.signal("loud", "hi")
    await handle.signal("done", 1)
    await handle.result(timeout=T)
    assert await handle.query("state") == {"added": [], "loud": ["HI"]}
    assert worker.stats.queries_replayed == 1


@workflow.defn
async def tally() -> int:
    """Adds each "add" signal; a negative one is a bug (a TypeError fails the workflow task)."""
    state = {"total": 0}

    def add(n: int) -> None:
        if n < 0:
            raise TypeError("negative")
        state["total"] += n

    workflow.set_signal_handler("add", add)
    workflow.set_query_handler("total", lambda: state["total"])
    await workflow.wait_condition(lambda: state["total"] >= 1000)
    return state["total"]


async def test_a_query_sees_every_signal_sent_before_it(client, start_worker):
    """Temporal's consistent queries: a query waits until the run has taken in the inbox
    events that came before it, so read-after-write holds for signals (here 25 times in a
    row, each query right after its signal, answered from the cache or by replay)."""
    await start_worker(workflows=[tally])
    handle = await client.start(tally, id="tally")
    for i in range(1, 26):
        await handle.signal("add", 1)
        assert await handle.query("total") == i


async def test_a_query_does_not_wait_on_a_failing_workflow_task(client, start_worker, sql):
    """A signal whose handler hits a bug fails the task (backing off): a query then answers
    from the state before it rather than wait for a fixed deployment."""
    await start_worker(workflows=[tally])
    handle = await client.start(tally, id="tally-bug")
    await handle.signal("add", 5)
    assert await handle.query("total") == 5
    await handle.signal("add", -1)
    await wait_until(lambda: sql("SELECT failures FROM cairn.workflow_tasks WHERE run_id = %s AND failures > 0",
                                 (handle.run_id,)), what="the workflow task to fail")
    assert await handle.query("total", timeout=5) == 5


async def test_query_errors(client, start_worker, sql):
    await start_worker(workflows=[mailbox], activities=[shout])
    handle = await client.start(mailbox, id="query-errors")
    await _settled(sql, handle.run_id)
    before = events(sql, handle.run_id)
    with pytest.raises(QueryFailed) as info:
        await handle.query("nope")
    assert info.value.type == "UnknownQuery"
    assert "known: added_plus, boom, sneaky, state" in str(info.value)
    with pytest.raises(QueryFailed) as info:
        await handle.query("boom")
    assert (info.value.type, info.value.message) == ("ZeroDivisionError", "division by zero")
    with pytest.raises(QueryFailed) as info:
        await handle.query("sneaky")
    assert info.value.type == "DeterminismViolation"
    assert "read-only" in info.value.message
    assert "ActivityScheduled" in info.value.message
    with pytest.raises(QueryFailed) as info:
        await handle.query("added_plus")  # missing argument: refused before the handler runs
    assert info.value.type == "InvalidArguments"
    assert "takes 1 argument(s), got 0" in info.value.message
    # The run is unharmed: nothing recorded, and it still works.
    assert events(sql, handle.run_id) == before
    assert sql("SELECT count(*) FROM cairn.activity_tasks") == [(0,)]
    await handle.signal("add", 5)
    await handle.signal("done", 0)
    assert await handle.result(timeout=T) == {"added": [5], "loud": []}
    with pytest.raises(WorkflowNotFound):
        await client.query("no-such-workflow", "state")
    with pytest.raises(InputValidationError):
        await handle.query("state", float("nan"))
    assert sql("SELECT count(*) FROM cairn.query_requests") == [(0,)]


async def test_query_times_out_without_a_worker(client, sql):
    handle = await client.start(mailbox, id="query-nobody", queue="lonely")
    with pytest.raises(QueryTimeout, match="queue 'lonely'"):
        await handle.query("state", timeout=0.5)
    assert sql("SELECT count(*) FROM cairn.query_requests") == [(0,)]
    assert run_status(sql, handle.run_id) == "running"


async def test_the_sync_client_signals_and_queries(client, start_worker, sql, db_url):
    await start_worker(workflows=[mailbox, collector], activities=[shout])

    def script() -> tuple[Any, Any, Any]:
        with SyncClient(db_url) as sync:
            handle = sync.signal_with_start(mailbox, id="sync-msg", signal="add", signal_payload=1)
            sync.signal("sync-msg", "add", 2)
            handle.signal("add", 3)
            wait = sync.signal_with_start(collector, 0, id="sync-collector", signal="go")
            deadline = time.monotonic() + T
            seen = handle.query("state")
            while seen["added"] != [1, 2, 3] and time.monotonic() < deadline:  # the signals are applied
                time.sleep(0.05)
                seen = handle.query("state")
            plus = sync.query("sync-msg", "added_plus", 4)
            handle.signal("done", 0)
            return seen, plus, (handle.result(timeout=T), wait.result(timeout=T))

    seen, plus, results = await asyncio.to_thread(script)
    assert seen == {"added": [1, 2, 3], "loud": []}
    assert plus == [1, 2, 3, 4]
    assert results == ({"added": [1, 2, 3], "loud": []}, [])
