"""Operator actions' writes: reset (a new run from an old run's history, see
:mod:`cairn.client.operators`) and retry (a failed run again from its original input)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.resets import ResetPlan
from cairn.errors import CairnError, WorkflowAlreadyStarted
from cairn.store import clock, db, lifecycle, runs
from cairn.store.sql import q

__all__ = ["RETRYABLE_STATUSES", "Planner", "ResetPlan", "reset", "reset_in", "retry", "retry_in"]

RETRYABLE_STATUSES = ("failed", "cancelled", "terminated", "timed_out")  # what retry starts again


# The plan of a reset, from the old run's history and the signals still in its inbox.
Planner = Callable[[list[Event], list[dict[str, Any]]], ResetPlan]


def _jsonb(value: Any) -> Jsonb | None:
    """SQL NULL for None (``Jsonb(None)`` would store a JSON null)."""
    return None if value is None else Jsonb(value)


def _check(workflow_id: str, new_id: str) -> str:
    return f"look for its new run {new_id} with `cairn describe {workflow_id}`"


async def reset(pool: db.Pool, old: runs.Run, new_id: str, plan_of: Planner, *, reason: str) -> None:
    """Resets run ``old`` as run ``new_id`` in one transaction (:func:`reset_in`).

    Raises:
        WorkflowAlreadyStarted: another run of the workflow id is open.
        InputValidationError: from ``plan_of`` (a seq that starts no workflow task).
    """
    async with pool.connection() as c:
        try:
            await reset_in(c, old, new_id, plan_of, reason=reason)
        except psycopg.Error as exc:
            raise db.translate_write(exc, what=f"resetting workflow {old.workflow_id!r}",
                                     check=_check(old.workflow_id, new_id)) from None


async def reset_in(c: db.Conn, old: runs.Run, new_id: str, plan_of: Planner, *, reason: str) -> int:
    """Resets run ``old`` as run ``new_id`` in a transaction of its own (a savepoint in the
    caller's, if it has one: a batch's chunk): an open old run is terminated under its
    workflow-task lock, the new run gets the copied history, the inbox, and the pending
    activities and timers of ``plan_of``'s plan. Returns the seq it reset to; psycopg's
    errors are the caller's to translate.

    Raises:
        WorkflowAlreadyStarted: another run of the workflow id is open.
        InputValidationError: from ``plan_of`` (a seq that starts no workflow task).
    """
    params: dict[str, Any] = {"run_id": old.run_id, "now": clock.now(c)}
    async with c.transaction():
        cur = c.cursor(row_factory=dict_row)
        pending_signals: list[dict[str, Any]] = []
        running = old.status == "running"
        if running:
            # Wait for a worker mid-task and keep others out: we append to its history.
            locked = await lifecycle.lock_task(c, old.run_id)
            running = locked is not None and locked.status == "running"
            if locked is not None and running:
                pending_signals = [d for _, t, d in locked.inbox if t == h.SIGNAL_RECEIVED]
        hist = await c.execute(q("read_history"), {"run_id": old.run_id})
        events = [Event(s, t, d, a) for s, t, d, a in await hist.fetchall()]
        plan = plan_of(events, pending_signals)
        old_row = await (await cur.execute(q("run_lifecycle"), params)).fetchone()
        assert old_row is not None
        open_run = await (await cur.execute(q("open_run_by_workflow_id"), {
            "namespace": old.namespace, "workflow_id": old.workflow_id,
            "id_reuse_policy": "allow_duplicate"})).fetchone()
        if open_run is not None and str(open_run["run_id"]) != old.run_id:
            raise WorkflowAlreadyStarted(old.workflow_id, str(open_run["run_id"]))
        why = reason or f"reset to seq {plan.seq}"
        if running:
            # Like any termination: its parent hears of it, its children get their policy.
            await lifecycle.close_terminated(c, old.run_id, events[-1].seq, f"reset to seq {plan.seq}",
                                             reset_run_id=new_id)
        new = {"run_id": new_id, "now": clock.now(c)}
        await c.execute(q("insert_reset_run"), {
            **new, "namespace": old.namespace, "workflow_id": old.workflow_id,
            "workflow_type": old.workflow_type, "queue": old.queue,
            "search_attributes": Jsonb(plan.search_attributes), "memo": _jsonb(old_row["memo"]),
            # the old run's place in its queue and its concurrency key (a slot: the terminate
            # above gave back the old run's; the new run takes one or waits)
            **{k: old_row[k] for k in ("priority", "fairness_key", "fairness_weight", "concurrency_key")},
            "reset_from": Jsonb({"kind": "reset", "run_id": old.run_id, "seq": plan.seq, "reason": why}),
            "events": Jsonb([{**e.to_json(), "at": e.at.isoformat() if e.at else None} for e in plan.copied]),
            "inbox": Jsonb([{"type": t, "data": d} for t, d in plan.inbox]),
        })
        await c.execute(q("copy_run_payloads"), {"run_id": old.run_id, "new_run_id": new_id})
        if plan.activities:
            await c.execute(q("insert_reset_activities"), {
                **new, "namespace": old.namespace, "workflow_id": old.workflow_id,
                "workflow_type": old.workflow_type,
                "workflow_queue": old.queue, "activities": Jsonb(plan.activities)})
        if plan.timers:
            await c.execute(q("start_timers"), {**new, "workflow_queue": old.queue,
                                                "timers": Jsonb(plan.timers)})
    return plan.seq


async def retry(pool: db.Pool, old: runs.Run, new_id: str) -> None:
    """Starts run ``old`` again from its original input as run ``new_id`` (:func:`retry_in`).

    Raises:
        WorkflowAlreadyStarted: another run of the workflow id is open.
    """
    async with pool.connection() as c:
        try:
            await retry_in(c, old, new_id)
        except psycopg.Error as exc:
            raise db.translate_write(exc, what=f"retrying workflow {old.workflow_id!r}",
                                     check=_check(old.workflow_id, new_id)) from None


async def retry_in(c: db.Conn, old: runs.Run, new_id: str) -> None:
    """Starts run ``old`` again from its original input as run ``new_id``, in a transaction
    of its own (a savepoint in the caller's): the same workflow id, type, queue, start search
    attributes, memo, priority and concurrency key, fresh randomness, no parent, no chain, a
    new execution deadline from the original timeout.

    Raises:
        WorkflowAlreadyStarted: another run of the workflow id is open.
    """
    async with c.transaction():
        cur = c.cursor(row_factory=dict_row)
        started = await (await cur.execute(q("read_history_after"), {"run_id": old.run_id, "after": 0})
                         ).fetchone()
        old_row = await (await cur.execute(q("run_lifecycle"), {"run_id": old.run_id})).fetchone()
        if old_row is None or started is None or started["type"] != h.WORKFLOW_STARTED:
            raise CairnError(f"run {old.run_id} has no WorkflowStarted event")
        data = {k: v for k, v in started["data"].items()
                if k not in ("seed", "parent", "parent_close_policy", "continued_from", "execution_deadline")}
        params = lifecycle.start_params(
            namespace=old.namespace, workflow_id=old.workflow_id, workflow_type=old.workflow_type,
            queue=old.queue, args=list(data.get("input") or []),
            execution_timeout=data.get("execution_timeout"), **lifecycle.kept_place(old_row))
        params.update(run_id=new_id, data=Jsonb(data), memo=_jsonb(old_row["memo"]),
                      search_attributes=Jsonb(data.get("search_attributes") or {}))
        await runs.start(c, params, "fail")
        await c.execute(q("copy_run_payloads"), {"run_id": old.run_id, "new_run_id": new_id})
        await c.execute(q("set_reset_from"), {"run_id": new_id, "reset_from": Jsonb(
            {"kind": "retry", "run_id": old.run_id, "seq": None, "reason": "retry"})})
