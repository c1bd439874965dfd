"""Start -> complete with real payloads: several arguments, pydantic models, dataclasses,
sync activities in the thread pool, activity.info() and heartbeat details across attempts."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from cairn import ApplicationError, RetryPolicy, activity, workflow
from support import events, outcomes_per_activity, run_status, types_of

FAST_RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.05), jitter=0.0, maximum_attempts=5)


# ---------------------------------------------------------------- several arguments


@activity.defn
async def describe_args(a: int, b: str, c: list[int], d: float = 1.5) -> dict[str, Any]:
    return {"a": a, "b": b, "c": c, "d": d}


@workflow.defn
async def many_args(a: int, b: str, c: list[int], d: float = 1.5) -> dict[str, Any]:
    first = await workflow.execute_activity(describe_args, a, b, c, start_to_close_timeout=10)
    second = await workflow.execute_activity(describe_args, a + 1, b * 2, [*c, 9], d * 2,
                                             start_to_close_timeout=10)
    return {"first": first, "second": second}


async def test_multiple_arguments_and_defaults(client, start_worker, sql):
    await start_worker(workflows=[many_args], activities=[describe_args])
    handle = await client.start(many_args, 1, "x", [1, 2], id="args-1")
    assert await handle.result(timeout=20) == {
        "first": {"a": 1, "b": "x", "c": [1, 2], "d": 1.5},
        "second": {"a": 2, "b": "xx", "c": [1, 2, 9], "d": 3.0},
    }
    evs = events(sql, handle.run_id)
    assert evs[0][2]["input"] == [1, "x", [1, 2]]
    scheduled = [d["input"] for _, t, d in evs if t == "ActivityScheduled"]
    assert scheduled == [[1, "x", [1, 2]], [2, "xx", [1, 2, 9], 3.0]]


# ---------------------------------------------------------------- pydantic models


class Item(BaseModel):
    sku: str
    quantity: int
    unit_price: float


class Order(BaseModel):
    order_id: str
    items: list[Item]
    note: str | None = None


class Receipt(BaseModel):
    order_id: str
    total: float
    lines: int
    echoed: Order


@activity.defn
async def price_order(order: Order) -> Receipt:
    assert isinstance(order, Order)
    assert all(isinstance(i, Item) for i in order.items)
    total = sum(i.quantity * i.unit_price for i in order.items)
    return Receipt(order_id=order.order_id, total=total, lines=len(order.items), echoed=order)


@workflow.defn
async def checkout(order: Order) -> Receipt:
    assert isinstance(order, Order)
    receipt = await workflow.execute_activity(price_order, order, start_to_close_timeout=10)
    assert isinstance(receipt, Receipt), type(receipt)
    return receipt


async def test_pydantic_model_round_trip(client, start_worker, sql):
    await start_worker(workflows=[checkout], activities=[price_order])
    order = Order(order_id="o-1", items=[Item(sku="a", quantity=2, unit_price=1.25),
                                         Item(sku="b", quantity=1, unit_price=10.0)])
    handle = await client.start(checkout, order, id="order-o-1")
    receipt = await handle.result(timeout=20)
    assert isinstance(receipt, Receipt)
    assert receipt == Receipt(order_id="o-1", total=12.5, lines=2, echoed=order)
    # The recorded input and result are plain JSON.
    evs = events(sql, handle.run_id)
    assert evs[0][2]["input"] == [order.model_dump(mode="json")]
    assert evs[-1][1] == "WorkflowCompleted"
    assert evs[-1][2]["result"] == receipt.model_dump(mode="json")
    # A handle without the signature gives back the JSON form.
    assert await client.get_handle("order-o-1").result(timeout=5) == receipt.model_dump(mode="json")


# ---------------------------------------------------------------- dataclasses


@dataclass
class Point:
    x: int
    y: int


@activity.defn
async def add_points(p: Point, q: Point) -> Point:
    assert isinstance(p, Point)
    assert isinstance(q, Point)
    return Point(p.x + q.x, p.y + q.y)


@workflow.defn
async def translate(p: Point) -> Point:
    assert isinstance(p, Point)
    moved = await workflow.execute_activity(add_points, p, Point(10, 20), start_to_close_timeout=10)
    assert isinstance(moved, Point)
    return moved


async def test_dataclass_input(client, start_worker, sql):
    await start_worker(workflows=[translate], activities=[add_points])
    handle = await client.start(translate, Point(1, 2), id="dc-1")
    assert await handle.result(timeout=20) == Point(11, 22)
    evs = events(sql, handle.run_id)
    assert evs[0][2]["input"] == [{"x": 1, "y": 2}]
    assert evs[-1][2]["result"] == {"x": 11, "y": 22}


# ---------------------------------------------------------------- sync activity, info()


@activity.defn
def blocking_info(label: str) -> dict[str, Any]:
    """A plain ``def``: runs in the worker's thread pool, where info() still works."""
    i = activity.info()
    return {
        "label": label, "thread": threading.current_thread().name,
        "main_thread": threading.current_thread() is threading.main_thread(),
        "attempt": i.attempt, "key": i.idempotency_key, "seq": i.seq,
        "activity_type": i.activity_type, "workflow_type": i.workflow_type,
        "workflow_id": i.workflow_id, "run_id": i.run_id,
    }


_flaky_keys: dict[str, list[tuple[int, str]]] = {}


@activity.defn
async def flaky_info(tag: str) -> dict[str, Any]:
    i = activity.info()
    _flaky_keys.setdefault(tag, []).append((i.attempt, i.idempotency_key))
    if i.attempt < 3:
        raise RuntimeError(f"attempt {i.attempt} fails")
    return {"attempt": i.attempt, "key": i.idempotency_key, "seq": i.seq}


@workflow.defn
async def info_flow(tag: str) -> dict[str, Any]:
    sync = await workflow.execute_activity(blocking_info, tag, start_to_close_timeout=10)
    flaky = await workflow.execute_activity(flaky_info, tag, start_to_close_timeout=10,
                                            retry_policy=FAST_RETRY)
    return {"sync": sync, "flaky": flaky}


async def test_sync_activity_and_info(client, start_worker, sql):
    await start_worker(workflows=[info_flow], activities=[blocking_info, flaky_info])
    handle = await client.start(info_flow, "t1", id="info-1")
    out = await handle.result(timeout=20)
    run_id = handle.run_id
    seqs = [s for s, t, _ in events(sql, run_id) if t == "ActivityScheduled"]
    assert len(seqs) == 2

    sync = out["sync"]
    assert sync["label"] == "t1"
    assert sync["thread"].startswith("cairn-activity")
    assert sync["main_thread"] is False
    assert sync["attempt"] == 1
    assert sync["seq"] == seqs[0]
    assert sync["key"] == f"info-1/{run_id}/{seqs[0]}"
    assert (sync["activity_type"], sync["workflow_type"]) == ("blocking_info", "info_flow")
    assert (sync["workflow_id"], sync["run_id"]) == ("info-1", run_id)

    flaky = out["flaky"]
    assert flaky["attempt"] == 3
    # Every attempt saw the same idempotency key: workflow id / run id / activity seq.
    assert _flaky_keys["t1"] == [(n, f"info-1/{run_id}/{seqs[1]}") for n in (1, 2, 3)]
    completed = [d for _, t, d in events(sql, run_id) if t == "ActivityCompleted"]
    assert [d["attempt"] for d in completed] == [1, 3]
    assert set(outcomes_per_activity(sql, run_id).values()) == {1}


# ---------------------------------------------------------------- heartbeat details


_progress_seen: dict[str, list[Any]] = {}


@activity.defn
async def resumable(tag: str, wait_for_flush: bool) -> dict[str, Any]:
    """Attempt 1 reports progress and fails; attempt 2 resumes from the recorded progress."""
    i = activity.info()
    _progress_seen.setdefault(tag, []).append(i.heartbeat_details)
    if i.attempt == 1:
        activity.heartbeat({"done": 40, "cursor": "page-4"})
        if wait_for_flush:
            await asyncio.sleep(1.2)  # more than the worker's heartbeat flush interval (0.5 s)
        raise RuntimeError("crashed half way")
    return {"attempt": i.attempt, "resumed_from": i.heartbeat_details}


@activity.defn
def resumable_sync(tag: str) -> dict[str, Any]:
    import time

    i = activity.info()
    _progress_seen.setdefault(tag, []).append(i.heartbeat_details)
    if i.attempt == 1:
        activity.heartbeat(["step", 7])
        time.sleep(1.2)
        raise RuntimeError("crashed half way")
    return {"attempt": i.attempt, "resumed_from": i.heartbeat_details}


@workflow.defn
async def resume_flow(tag: str, wait_for_flush: bool) -> dict[str, Any]:
    return await workflow.execute_activity(resumable, tag, wait_for_flush, start_to_close_timeout=10,
                                           retry_policy=FAST_RETRY)


@workflow.defn
async def resume_sync_flow(tag: str) -> dict[str, Any]:
    return await workflow.execute_activity(resumable_sync, tag, start_to_close_timeout=10,
                                           retry_policy=FAST_RETRY)


async def test_heartbeat_details_reach_next_attempt(client, start_worker, sql):
    await start_worker(workflows=[resume_flow, resume_sync_flow], activities=[resumable, resumable_sync])
    h1 = await client.start(resume_flow, "async", True, id="hb-async")
    h2 = await client.start(resume_sync_flow, "sync", id="hb-sync")
    assert await h1.result(timeout=20) == {"attempt": 2, "resumed_from": {"done": 40, "cursor": "page-4"}}
    assert await h2.result(timeout=20) == {"attempt": 2, "resumed_from": ["step", 7]}
    assert _progress_seen["async"] == [None, {"done": 40, "cursor": "page-4"}]
    assert _progress_seen["sync"] == [None, ["step", 7]]
    for h in (h1, h2):
        assert run_status(sql, h.run_id) == "completed"
        assert types_of(sql, h.run_id).count("ActivityCompleted") == 1


async def test_heartbeat_details_survive_an_immediate_failure(client, start_worker):
    """activity.heartbeat() documents that "the last details reach the next attempt ... if
    this one fails": that must hold even when the attempt fails before the next flush."""
    await start_worker(workflows=[resume_flow], activities=[resumable])
    handle = await client.start(resume_flow, "immediate", False, id="hb-immediate")
    out = await handle.result(timeout=20)
    assert out == {"attempt": 2, "resumed_from": {"done": 40, "cursor": "page-4"}}


# ---------------------------------------------------------------- application errors are data


@activity.defn
async def always_declines(card: str) -> str:
    raise ApplicationError(f"card {card} declined", type="CardDeclined", details={"code": 51},
                           non_retryable=True)


@workflow.defn
async def pay(card: str) -> dict[str, Any]:
    from cairn import ActivityError

    try:
        await workflow.execute_activity(always_declines, card, start_to_close_timeout=10)
    except ActivityError as e:
        return {"type": e.cause.type, "message": e.cause.message, "details": e.cause.details,
                "attempts": e.attempts, "retry_state": e.retry_state, "activity": e.activity,
                "seq": e.seq}
    return {}


async def test_application_error_details_reach_workflow(client, start_worker, sql):
    await start_worker(workflows=[pay], activities=[always_declines])
    handle = await client.start(pay, "4242", id="pay-1")
    out = await handle.result(timeout=20)
    seq = next(s for s, t, _ in events(sql, handle.run_id) if t == "ActivityScheduled")
    assert out == {"type": "CardDeclined", "message": "card 4242 declined", "details": {"code": 51},
                   "attempts": 1, "retry_state": "non_retryable", "activity": "always_declines",
                   "seq": seq}
