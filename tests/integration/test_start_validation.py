"""Workflow ids: conflict policies while a run is open and after it closes; invalid starts
raise InputValidationError and write nothing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest

from cairn import (
    Client,
    InputValidationError,
    WorkflowAlreadyStarted,
    activity,
    workflow,
)
from support import run_status, wait_until

_gate = asyncio.Event()


@activity.defn
async def wait_for_gate() -> str:
    await asyncio.wait_for(_gate.wait(), 20)
    return "opened"


@workflow.defn
async def gated(label: str) -> str:
    await workflow.execute_activity(wait_for_gate, start_to_close_timeout=30)
    return label


@workflow.defn
async def parked(label: str) -> str:
    await workflow.sleep(3600)
    return label


@dataclass
class Payload:
    name: str
    count: int


@workflow.defn
async def typed(n: int, payload: Payload, tags: list[str]) -> int:
    return n


async def test_terminate_existing_replaces_the_open_run_in_one_transaction(client, start_worker, sql):
    """Temporal's TERMINATE_EXISTING: the open run is terminated and the new one started
    together; with no open run it is a plain start; a concurrent pair leaves one open run."""
    await start_worker(workflows=[parked])
    first = await client.start(parked, "one", id="replace-me")
    await wait_until(lambda: sql("SELECT 1 FROM cairn.timers t JOIN cairn.runs r USING (run_id) "
                                 "WHERE r.workflow_id = 'replace-me'"), what="the first run's timer")
    second = await client.start(parked, "two", id="replace-me", id_conflict="terminate_existing")
    assert second.run_id != first.run_id
    assert run_status(sql, first.run_id) == "terminated"
    assert run_status(sql, second.run_id) == "running"
    (reason,) = sql("SELECT data->>'reason' FROM cairn.history WHERE run_id = %s AND type = 'WorkflowTerminated'",
                    (first.run_id,))[0]
    assert "terminate_existing" in reason
    # Two at once: each terminates what is open when it gets the lock; one run stays open.
    both = await asyncio.gather(*(client.start(parked, f"r{i}", id="replace-me", id_conflict="terminate_existing")
                                  for i in range(2)))
    open_runs = sql("SELECT run_id::text FROM cairn.runs WHERE workflow_id = 'replace-me' AND status = 'running'")
    assert len(open_runs) == 1
    assert open_runs[0][0] in {h.run_id for h in both}
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'replace-me'") == [(4,)]
    fresh = await client.start(parked, "new", id="fresh-id", id_conflict="terminate_existing")
    assert run_status(sql, fresh.run_id) == "running"
    with pytest.raises(InputValidationError, match="allow_duplicate"):
        await client.start(parked, "x", id="replace-me", id_conflict="terminate_existing",
                           id_reuse_policy="reject_duplicate")
    with pytest.raises(InputValidationError, match="id_conflict must be one of"):
        await client.start(parked, "x", id="replace-me", id_conflict="replace")  # type: ignore[arg-type]


def _row_counts(sql) -> dict[str, int]:
    return {t: sql(f"SELECT count(*) FROM cairn.{t}")[0][0]
            for t in ("runs", "history", "workflow_tasks", "activity_tasks", "timers", "inbox")}


async def test_id_conflict_policies(client, start_worker, sql):
    _gate.clear()
    try:
        await start_worker(workflows=[gated], activities=[wait_for_gate])
        first = await client.start(gated, "one", id="order-42")

        with pytest.raises(WorkflowAlreadyStarted) as info:
            await client.start(gated, "two", id="order-42")
        assert info.value.workflow_id == "order-42"
        assert info.value.run_id == first.run_id
        with pytest.raises(WorkflowAlreadyStarted):
            await client.start(gated, "two", id="order-42", id_conflict="fail")

        same = await client.start(gated, "three", id="order-42", id_conflict="use_existing")
        assert same.run_id == first.run_id
        assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'order-42'") == [(1,)]
        # The rejected starts wrote no history either.
        assert sql("SELECT count(*) FROM cairn.history WHERE type = 'WorkflowStarted'") == [(1,)]

        _gate.set()
        assert await first.result(timeout=20) == "one"
        assert await same.result(timeout=5) == "one"

        # Closed: the same id starts a new run, whatever the policy.
        second = await client.start(gated, "four", id="order-42")
        assert second.run_id != first.run_id
        assert await second.result(timeout=20) == "four"
        third = await client.start(gated, "five", id="order-42", id_conflict="use_existing")
        assert third.run_id not in (first.run_id, second.run_id)
        assert await third.result(timeout=20) == "five"

        rows = sql("SELECT run_id::text, status FROM cairn.runs WHERE workflow_id = 'order-42' ORDER BY run_id")
        assert rows == [(first.run_id, "completed"), (second.run_id, "completed"), (third.run_id, "completed")]
        # A handle by workflow id alone follows the newest run.
        latest = client.get_handle("order-42")
        assert await latest.result(timeout=5) == "five"
        assert latest.run_id == third.run_id
        # A handle on an old run still reads that run.
        assert await client.get_handle("order-42", first.run_id).result(timeout=5) == "one"
    finally:
        _gate.set()


async def test_concurrent_starts_of_one_id(client, db_url, sql):
    """Ten clients race to start the same id: one run; "fail" starts lose with
    WorkflowAlreadyStarted, "use_existing" starts get that same run."""
    clients = [await Client.connect(db_url) for _ in range(4)]
    try:
        async def start(i: int, policy: str):
            c = clients[i % len(clients)]
            try:
                return (await c.start(parked, f"p{i}", id="contended", id_conflict=policy)).run_id
            except WorkflowAlreadyStarted as exc:
                return exc

        results = await asyncio.gather(*(start(i, "fail" if i % 2 else "use_existing") for i in range(10)))
    finally:
        for c in clients:
            await c.close()
    rows = sql("SELECT run_id::text FROM cairn.runs WHERE workflow_id = 'contended'")
    assert len(rows) == 1
    run_id = rows[0][0]
    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, WorkflowAlreadyStarted)]
    assert set(winners) == {run_id}
    assert all(r.run_id == run_id for r in losers)
    assert len(winners) + len(losers) == 10
    # Every use_existing start got the run; at most one "fail" start won.
    assert len(winners) >= 5
    assert sql("SELECT count(*) FROM cairn.history") == [(1,)]
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(1,)]


_OK_ARGS = (1, {"name": "a", "count": 1}, [])
INVALID_STARTS: list[tuple[str, dict[str, object], tuple[object, ...], str]] = [
    ("empty id", {"id": ""}, _OK_ARGS, "workflow id"),
    ("blank id", {"id": "   "}, _OK_ARGS, "workflow id"),
    ("long id", {"id": "x" * 1001}, _OK_ARGS, "longer than 1000"),
    ("non-string id", {"id": 42}, _OK_ARGS, "workflow id"),
    ("empty queue", {"queue": ""}, _OK_ARGS, "queue"),
    ("padded queue", {"queue": " padded"}, _OK_ARGS, "queue"),
    ("long queue", {"queue": "q" * 201}, _OK_ARGS, "queue"),
    ("unknown policy", {"id_conflict": "replace"}, _OK_ARGS, "id_conflict"),
    ("missing argument", {}, (1, {"name": "a", "count": 1}), "takes 3 argument"),
    ("extra argument", {}, (*_OK_ARGS, "extra"), "takes 3 argument"),
    ("wrong type", {}, ("not a number", {"name": "a", "count": 1}, []), "argument 'n'"),
    ("incomplete dataclass", {}, (1, {"name": "a"}, []), "argument 'payload'"),
    ("not JSON", {}, (1, {"name": "a", "count": 1}, [object()]), "not JSON-serialisable"),
]


async def test_invalid_start_writes_nothing(client, sql):
    """One database for all cases (each case checks that nothing at all was written)."""
    for case, kwargs, args, match in INVALID_STARTS:
        with pytest.raises(InputValidationError, match=match):
            await client.start(typed, *args, **kwargs)
        assert _row_counts(sql) == dict.fromkeys(_row_counts(sql), 0), case


async def test_invalid_start_inside_caller_transaction_writes_nothing(client, db_url, sql):
    import psycopg

    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        with pytest.raises(InputValidationError):
            await client.start(typed, "nope", {"name": "a", "count": 1}, [], conn=conn)
        await conn.commit()
    assert _row_counts(sql) == dict.fromkeys(_row_counts(sql), 0)


async def test_start_by_type_name_is_validated_against_the_registry(client, start_worker, sql, caplog):
    # No worker has registered the type yet: the start is accepted with a warning and the run
    # waits for a worker (issue 15, B10: the outbox pattern starts runs while workers are down).
    with caplog.at_level(logging.WARNING, logger="cairn.client"):
        early = await client.start("typed", 1, {"name": "a", "count": 1}, [], id="early")
        for i in range(3):  # a backlog started before the workers: one warning, not one per start
            await client.start("typed", 1, {"name": "a", "count": 1}, [], id=f"early-{i}")
            await client.start(typed, 1, {"name": "a", "count": 1}, [], id=f"early-fn-{i}")
    assert "no worker has registered workflow type 'typed' on queue 'default' yet; the run waits for one" \
        in caplog.text
    assert caplog.text.count("no worker has registered workflow type 'typed'") == 1, caplog.text
    assert sql("SELECT DISTINCT queue, workflow_type FROM cairn.workflow_tasks") == [("default", "typed")]

    await start_worker(workflows=[typed])
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.workflow_types WHERE name = 'typed'")[0][0],
                     what="the type to be registered")
    assert await early.result(timeout=20) == 1
    # Known now: the input is validated before anything is written.
    before = _row_counts(sql)
    with pytest.raises(InputValidationError, match="invalid"):
        await client.start("typed", "x", {"name": "a", "count": 1}, [])
    with pytest.raises(InputValidationError):
        await client.start("typed", 1)
    assert _row_counts(sql) == before
    # A name nobody registered (a typo?) is accepted too, and the warning lists the known ones.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cairn.client"):
        await client.start("tyoped", 1, id="typo")
    assert "(registered types: typed)" in caplog.text

    handle = await client.start("typed", 7, {"name": "a", "count": 1}, ["t"], id="by-name")
    assert await handle.result(timeout=20) == 7
    assert run_status(sql, handle.run_id) == "completed"


async def test_start_of_a_plain_function_is_rejected(client, sql):
    async def not_a_workflow() -> None:
        pass

    with pytest.raises(InputValidationError, match="not a workflow"):
        await client.start(not_a_workflow)
    assert _row_counts(sql)["runs"] == 0
