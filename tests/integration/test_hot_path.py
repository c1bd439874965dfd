"""The hot path's shortcuts (ARCHITECTURE.md, "The life of a workflow task"): each
saves statements, and each must keep the guarantees of the path it shortcuts."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from cairn import Client, activity, workflow
from cairn.engine.history import as_stored
from cairn.errors import Refused, WorkflowTerminated
from cairn.store import transactions as _transactions
from cairn.store.sql import PREPARED, q
from cairn.store.tasks import bounds
from cairn.worker import WORKER_CONNECTION_OPTIONS
from support import events, types_of, wait_until


@activity.defn
async def bump(x: int) -> int:
    return x + 1


@workflow.defn
async def one_bump(x: int) -> int:
    return await workflow.execute_activity(bump, x, start_to_close_timeout=timedelta(seconds=10))


@workflow.defn
async def bump_elsewhere(x: int) -> int:
    return await workflow.execute_activity(bump, x, queue="acts", start_to_close_timeout=timedelta(seconds=10))


@workflow.defn
async def three_bumps(x: int) -> int:
    for _ in range(3):
        x = await workflow.execute_activity(bump, x, start_to_close_timeout=timedelta(seconds=10))
    return x


_gate: dict[str, asyncio.Event] = {}


@activity.defn
async def gate(x: int) -> int:
    _gate["entered"].set()
    await _gate["open"].wait()
    return x + 1


@workflow.defn
async def gated(x: int) -> list[int]:
    y = await workflow.execute_activity(gate, x, start_to_close_timeout=timedelta(seconds=30))
    z = await workflow.wait_signal("more")
    return [y, z]


@workflow.defn
async def parked(x: int) -> int:
    await workflow.sleep(3600)
    return x


async def test_outcomes_of_evicted_runs_take_the_fast_path(client, start_worker, sql):
    """cache_size=1: the runs' first tasks evict one another, and their activities'
    outcomes are still recorded with the next workflow task in one transaction (the run
    replayed from the history read with the task state), not through the inbox."""
    handles = [await client.start(one_bump, i, id=f"evicted-{i}") for i in range(6)]
    worker = await start_worker(workflows=[one_bump], activities=[bump], cache_size=1)
    assert [await h.result(timeout=30) for h in handles] == [i + 1 for i in range(6)]
    await wait_until(lambda: worker.stats.fast_path == 6, what="the worker's count of the last group")
    assert worker.stats.cache_misses >= 5
    assert sql("SELECT count(*) FROM cairn.runs WHERE status = 'completed'") == [(6,)]
    for table in ("workflow_tasks", "activity_tasks", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table}") == [(0,)], table


async def test_activity_only_worker_records_through_the_inbox(client, start_worker):
    """A worker without the run's workflow type never runs its workflow task: the outcome
    goes to the run's inbox and the workflow worker takes it from there."""
    acts = await start_worker(activities=[bump], queues=["acts"])
    await start_worker(workflows=[bump_elsewhere], queues=["flows"])
    handle = await client.start(bump_elsewhere, 41, queue="flows")
    assert await handle.result(timeout=30) == 42
    assert acts.stats.fast_path == 0
    assert acts.stats.activities_completed == 1


async def test_kept_task_is_reported(db_url, sql):
    """record_workflow_tasks keeps a task whose run got an event the task did not read, and
    says so with its marker row (the worker then claims again instead of waiting)."""
    async with await Client.connect(db_url) as c:
        handle = await c.start(parked, 1, id="kept")
    run_id = handle.run_id
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn, conn.transaction():
        claimed = await (await conn.execute(q("claim_workflow_task"), {
            "namespace": "default", "queues": ["default"], "types": ["parked"], "limit": 1, "now": None,
            "low": False})).fetchall()
        assert [str(r[0]) for r in claimed] == [run_id]
        # An event the claim did not read (as if committed between its snapshot and its lock).
        await conn.execute("INSERT INTO cairn.inbox (run_id, type, data) VALUES (%s, 'SignalReceived', %s)",
                           [run_id, Jsonb({"name": "s", "payload": None})])
        rows = await (await conn.execute(q("record_workflow_tasks"), _with_bounds({
            "namespace": "default", "now": None, "inbox_ids": [], "worker": "t", "lease": 5.0,
            "tasks": Jsonb([{
                "run_id": run_id, "workflow_id": "kept", "workflow_type": "parked", "workflow_queue": "default",
                "events": [{"seq": 2, "type": "WorkflowTaskStarted", "data": {"time": 0, "worker": "t"}}],
                "activities": []}])}))).fetchall()
    assert [(str(row[0]), row[-1]) for row in rows] == [(run_id, True)]
    assert sql("SELECT count(*) FROM cairn.workflow_tasks WHERE run_id = %s", [run_id]) == [(1,)]


async def test_batch_record_keeps_only_the_run_with_an_unseen_event(db_url, sql):
    """One record_workflow_tasks statement for two runs: the run that got an event after the
    claim keeps its task (one marker row, with its run id); the other run's task goes."""
    async with await Client.connect(db_url) as c:
        runs = [(await c.start(parked, i, id=f"batch-{i}")).run_id for i in range(2)]
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn, conn.transaction():
        claimed = await (await conn.execute(q("claim_workflow_task"), {
            "namespace": "default", "queues": ["default"], "types": ["parked"], "limit": 8,
            "now": None, "low": False})).fetchall()
        assert sorted(str(r[0]) for r in claimed) == sorted(runs)
        await conn.execute("INSERT INTO cairn.inbox (run_id, type, data) VALUES (%s, 'SignalReceived', %s)",
                           [runs[0], Jsonb({"name": "s", "payload": None})])
        rows = await (await conn.execute(q("record_workflow_tasks"), _with_bounds({
            "namespace": "default", "now": None, "inbox_ids": [], "worker": "t", "lease": 5.0,
            "tasks": Jsonb([{
                "run_id": run_id, "workflow_id": f"batch-{i}", "workflow_type": "parked",
                "workflow_queue": "default", "activities": [],
                "events": [{"seq": 2, "type": "WorkflowTaskStarted", "data": {"time": 0, "worker": "t"}}]}
                for i, run_id in enumerate(runs)])}))).fetchall()
    assert [(str(row[0]), row[-1]) for row in rows] == [(runs[0], True)]
    assert sql("SELECT run_id::text FROM cairn.workflow_tasks") == [(runs[0],)]
    assert sql("SELECT count(*) FROM cairn.history WHERE seq = 2") == [(2,)]


async def test_record_without_a_new_event_reports_nothing_kept(db_url, sql):
    async with await Client.connect(db_url) as c:
        handle = await c.start(parked, 1, id="not-kept")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn, conn.transaction():
        await conn.execute(q("claim_workflow_task"), {
            "namespace": "default", "queues": ["default"], "types": ["parked"], "limit": 1, "now": None, "low": False})
        rows = await (await conn.execute(q("record_workflow_tasks"), _with_bounds({
            "namespace": "default", "now": None, "inbox_ids": [], "worker": "t", "lease": 5.0,
            "tasks": Jsonb([{
                "run_id": handle.run_id, "workflow_id": "not-kept", "workflow_type": "parked",
                "workflow_queue": "default", "activities": [],
                "events": [{"seq": 2, "type": "WorkflowTaskStarted", "data": {"time": 0, "worker": "t"}}]}])})
        )).fetchall()
    assert rows == []
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(0,)]


def _with_bounds(params: dict[str, Any]) -> dict[str, Any]:
    """A record_workflow_tasks call's parameters with its bounds (the batch's run ids)."""
    return {**params, **bounds(params["tasks"].obj)}


def _record_params(run_id: str, workflow_id: str) -> dict[str, object]:
    return _with_bounds({"namespace": "default", "now": None, "inbox_ids": [], "worker": "t", "lease": 5.0,
                         "tasks": Jsonb([{
                             "run_id": run_id, "workflow_id": workflow_id, "workflow_type": "parked",
                             "workflow_queue": "default", "activities": [],
                             "events": [{"seq": 2, "type": "WorkflowTaskStarted",
                                         "data": {"time": 0, "worker": "t"}}]}])})


_CLAIM = {"namespace": "default", "queues": ["default"], "types": ["parked"], "limit": 8,
          "now": None, "low": False}


async def _claim_and_record(conn: psycopg.AsyncConnection, record: dict[str, object], *,
                            commit: bool) -> list[dict[str, object]]:
    """A worker's hot transaction, by hand: claim with BEGIN, record (with COMMIT)."""
    async with _transactions.transaction(conn):
        claimed = await _transactions.execute(conn, "claim_workflow_task", _CLAIM, begin=True)
        await _transactions.execute(conn, "record_workflow_tasks", record, commit=commit)
        if commit:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # committed
    return claimed


async def _psycopg_rolls_back(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT 1", prepare=True)  # one of psycopg's own
        await conn.execute("SELECT 1 / 0")


async def test_hot_transaction_takes_two_round_trips(db_url, sql, tmp_path):
    """BEGIN rides with the claim and COMMIT with the record (cairn.store.transactions): the
    libpq protocol trace shows two simple queries from the client, nothing else."""
    async with await Client.connect(db_url) as c:
        handle = await c.start(parked, 1, id="two-trips")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True,
                                                     options=WORKER_CONNECTION_OPTIONS) as conn:
        await _transactions.configure(conn)
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as f:
            conn.pgconn.trace(f.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            claimed = await _claim_and_record(conn, _record_params(handle.run_id, "two-trips"), commit=True)
            conn.pgconn.untrace()
    assert [str(t["run_id"]) for t in claimed] == [handle.run_id]
    sent = [line.split("\t")[2] for line in trace.read_text().splitlines() if line.startswith("F")]
    assert sent == ["Query", "Query"]
    assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s", [handle.run_id]) == [(2,)]
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(0,)]


async def test_hot_statements_come_back_after_psycopg_deallocates_them(db_url, sql):
    """psycopg sends DEALLOCATE ALL after a rollback on a connection where it prepared
    statements of its own: the next hot transaction prepares Cairn's again and goes on."""
    async with await Client.connect(db_url) as c:
        handle = await c.start(parked, 1, id="deallocated")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await _transactions.configure(conn)
        prepared = "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'cairn%%'"
        with pytest.raises(psycopg.errors.DivisionByZero):
            await _psycopg_rolls_back(conn)
        assert await (await conn.execute(prepared)).fetchall() == [(0,)]
        claimed = await _claim_and_record(conn, _record_params(handle.run_id, "deallocated"), commit=False)
        assert [str(t["run_id"]) for t in claimed] == [handle.run_id]
        assert await (await conn.execute(prepared)).fetchall() == [(len(PREPARED),)]
    assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s", [handle.run_id]) == [(2,)]


async def test_hot_transaction_rolls_back_on_error(db_url, sql):
    """A failed record rolls the claimed batch back: the task is still there to claim."""
    async with await Client.connect(db_url) as c:
        handle = await c.start(parked, 1, id="rolled-back")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await _transactions.configure(conn)
        bad = _record_params(handle.run_id, "rolled-back")
        bad["tasks"] = Jsonb([{**bad["tasks"].obj[0], "events": [{"seq": 1, "type": "x", "data": {}}]}])  # type: ignore[attr-defined]
        with pytest.raises(Refused) as refused:  # translated by the store
            await _claim_and_record(conn, bad, commit=True)
        assert refused.value.race
        assert isinstance(refused.value.__cause__, psycopg.errors.UniqueViolation)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert sql("SELECT count(*) FROM cairn.workflow_tasks WHERE run_id = %s", [handle.run_id]) == [(1,)]
    assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s", [handle.run_id]) == [(1,)]


async def test_result_of_a_run_started_while_listening(client, start_worker):
    """result() skips its first read for a run this client started while listening, and
    still returns the outcome once the close NOTIFY arrives."""
    await start_worker(workflows=[one_bump], activities=[bump])
    assert await (await client.start(one_bump, 0)).result(timeout=30) == 1  # the listener is up now
    handle = await client.start(one_bump, 10)
    assert handle.run_id in client.listener.watched
    assert await handle.result(timeout=30) == 11
    assert handle.run_id not in client.listener.watched


async def test_result_after_the_listener_lost_its_connection(client, db_url, sql):
    """A close NOTIFY sent while the listener was away is never seen: the reconnect voids
    what the client knew, and result() reads the run instead of waiting for the NOTIFY."""
    await client.listener.ensure()
    handle = await client.start(parked, 1, id="lost-listener")
    assert client.listener.known_open(handle.run_id)
    epoch = client.listener.epoch
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN cairn_query_answered%'")
    deadline = asyncio.get_running_loop().time() + 30
    while client.listener.epoch == epoch:
        assert asyncio.get_running_loop().time() < deadline, "the listener never noticed"
        await asyncio.sleep(0.01)
    assert not client.listener.known_open(handle.run_id)
    async with await Client.connect(db_url) as other:
        await other.get_handle("lost-listener").terminate("test")
    with pytest.raises(WorkflowTerminated):
        await handle.result(timeout=60)


async def test_cached_runs_take_the_speculated_fast_path(client, start_worker, sql):
    """Outcomes of cached runs are recorded with the tasks run ahead from the cache, in one
    round trip; the history is what the locked way writes."""
    worker = await start_worker(workflows=[three_bumps], activities=[bump])
    handles = [await client.start(three_bumps, 10 * i, id=f"spec-{i}") for i in range(4)]
    assert [await h.result(timeout=30) for h in handles] == [10 * i + 3 for i in range(4)]
    # The worker counts after its commit, which result() may see first.
    await wait_until(lambda: worker.stats.fast_path == 12, what="the worker's count of the last group")
    assert (worker.stats.speculated, worker.stats.fast_path, worker.stats.speculation_missed) == (12, 12, 0), \
        worker.stats
    step = ["WorkflowTaskStarted", "ActivityCompleted"]
    assert types_of(sql, handles[0].run_id) == [
        "WorkflowStarted", "WorkflowTaskStarted", "ActivityScheduled", *step, "ActivityScheduled",
        *step, "ActivityScheduled", *step, "WorkflowCompleted"]
    assert [d for _, t, d in events(sql, handles[1].run_id) if t == "ActivityCompleted"] == [
        {"activity_seq": 3, "attempt": 1, "result": 11}, {"activity_seq": 6, "attempt": 1, "result": 12},
        {"activity_seq": 9, "attempt": 1, "result": 13}]
    for table in ("workflow_tasks", "activity_tasks", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table}") == [(0,)], table


async def test_speculation_missed_takes_the_locked_way(client, start_worker, sql, db_url):
    """A signal committed while the speculated group waits for the run's task lock: the
    database refuses the speculation (CR001), nothing of it is written, and the locked way
    records the outcome with the signal."""
    _gate.update(entered=asyncio.Event(), open=asyncio.Event())
    worker = await start_worker(workflows=[gated], activities=[gate])
    handle = await client.start(gated, 1, id="spec-miss")
    await asyncio.wait_for(_gate["entered"].wait(), 10)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:  # a transaction, held open
        await conn.execute(q("signal_run"), {"run_id": handle.run_id, "type": "SignalReceived",
                                             "data": Jsonb({"name": "more", "payload": 5})})
        _gate["open"].set()
        await wait_until(lambda: sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE '%%cairn_complete_activities_speculated%%'")[0][0],
            timeout=10, what="the speculated group to wait for the run's task lock")
        await conn.commit()
    assert await handle.result(timeout=30) == [2, 5]
    assert worker.stats.speculation_missed == 1
    types = types_of(sql, handle.run_id)
    assert (types.count("ActivityCompleted"), types.count("SignalReceived")) == (1, 1)


async def test_speculated_inputs_are_what_jsonb_gives_back(db_url):
    """The speculated fast path hands outcome data to the code without the database round
    trip: history.as_stored must give what a replay reads (key order, numbers)."""
    values = [1e16, 1.5e16, 1.2345678901234567e20, 1e300, -1e22, 1.5e-07, 1e-05, 0.1, 1.0, 100.0, -0.0, 0.0,
              5e15, 9.999999999999999e15, 3, 10**30, True, None, "é", [], {},
              {"bb": 1, "a": 2, "ccc": {"z": 1, "yy": [2e20, -0.0]}, "é": 1, "e": 2, "aa": [1.0]}]
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        for value in values:
            back = (await (await conn.execute("SELECT %s::jsonb", [Jsonb(value)])).fetchone())[0]
            mine = as_stored(value)
            assert (json.dumps(mine), type(mine)) == (json.dumps(back), type(back)), value
