"""Schedules in the database: their rows, and acting on slots (start, buffer, skip) under the
schedule's row lock. The decisions are :mod:`cairn.schedules`'s (pure); this module writes
them. The workers' maintenance loop calls :func:`fire_due`; the client's handle calls the
rest, always inside a transaction holding the schedule's row lock (``lock_schedule``), so a
client's trigger or backfill and a worker's pass never act on the same slot twice (the
``schedule_actions`` primary key would refuse it anyway).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from cairn.engine import history as h
from cairn.errors import DatabaseUnavailable, WorkflowAlreadyStarted
from cairn.options import Priority
from cairn.schedules import (
    Overlap,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    action_workflow_id,
    decide,
    due_slots,
    next_check,
)
from cairn.store import clock, db, lifecycle, runs
from cairn.store.messages import write_input
from cairn.store.runs import Conn
from cairn.store.sql import q
from cairn.store.transactions import atomic

log = logging.getLogger("cairn.worker")

BUFFER_POLL_SECONDS = 1.0  # how soon a schedule with waiting actions looks again whether its runs closed
FIRE_BATCH = 20            # schedules one maintenance pass fires at most (a full batch runs again at once)
FAILED_PASS_DELAY_SECONDS = 10.0  # a schedule whose pass failed is looked at again after this


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule's row."""

    namespace: str
    schedule_id: str
    spec: dict[str, Any]
    action: dict[str, Any]
    policy: dict[str, Any]
    paused: bool
    note: str
    processed_until: datetime
    next_check_at: datetime | None
    missed_slots: int
    created_at: datetime
    updated_at: datetime

    @property
    def key(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "schedule_id": self.schedule_id}


@dataclass(frozen=True, slots=True)
class ActionRow:
    """One slot acted on (``recent_schedule_actions``)."""

    slot: datetime
    kind: str
    status: str
    overlap: str
    workflow_id: str
    run_id: str | None
    taken_at: datetime
    started_at: datetime | None
    run_status: str | None


async def now(conn: Conn) -> datetime:
    """The database's clock (the transaction's start inside one)."""
    row = await (await conn.execute(q("schedule_now"), {"now": clock.now(conn)})).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def insert(conn: Conn, row: ScheduleRow) -> bool:
    """Creates the schedule; False if the id is taken."""
    cur = await conn.execute(q("insert_schedule"), {
        **row.key, "spec": Jsonb(row.spec), "action": Jsonb(row.action), "policy": Jsonb(row.policy),
        "paused": row.paused, "note": row.note, "now": row.created_at, "next_check_at": row.next_check_at})
    return await cur.fetchone() is not None


async def get(conn: Conn, namespace: str, schedule_id: str, *, lock: bool = False) -> ScheduleRow | None:
    """The schedule's row (locked for this transaction with ``lock``: waits for a firing worker)."""
    cur = await conn.execute(q("lock_schedule" if lock else "get_schedule"),
                             {"namespace": namespace, "schedule_id": schedule_id})
    r = await cur.fetchone()
    return ScheduleRow(*r) if r else None


async def list_rows(conn: Conn, namespace: str, limit: int) -> list[ScheduleRow]:
    cur = await conn.execute(q("list_schedules"), {"namespace": namespace, "limit": limit})
    return [ScheduleRow(*r) for r in await cur.fetchall()]


async def save(conn: Conn, row: ScheduleRow, at: datetime) -> None:
    """Writes a client's change of the (locked) schedule."""
    await conn.execute(q("update_schedule"), {
        **row.key, "spec": Jsonb(row.spec), "action": Jsonb(row.action), "policy": Jsonb(row.policy),
        "paused": row.paused, "note": row.note, "processed_until": row.processed_until,
        "next_check_at": row.next_check_at, "now": at})


async def delete(conn: Conn, namespace: str, schedule_id: str) -> bool:
    cur = await conn.execute(q("delete_schedule"), {"namespace": namespace, "schedule_id": schedule_id})
    return await cur.fetchone() is not None


async def recent_actions(conn: Conn, namespace: str, schedule_id: str, limit: int) -> list[ActionRow]:
    cur = await conn.execute(q("recent_schedule_actions"),
                             {"namespace": namespace, "schedule_id": schedule_id, "limit": limit})
    return [ActionRow(r[0], r[1], r[2], r[3], r[4], str(r[5]) if r[5] else None, r[6], r[7], r[8])
            for r in await cur.fetchall()]


async def action_counts(conn: Conn, namespace: str, schedule_id: str) -> tuple[int, int, int]:
    """(started, buffered, skipped)."""
    cur = await conn.execute(q("schedule_action_counts"), {"namespace": namespace, "schedule_id": schedule_id})
    r = await cur.fetchone()
    assert r is not None
    return int(r[0]), int(r[1]), int(r[2])


async def running_runs(conn: Conn, row: ScheduleRow) -> list[tuple[str, str]]:
    """(run id, workflow id) of the schedule's open runs."""
    cur = await conn.execute(q("schedule_running_runs"), row.key)
    return [(str(r[0]), str(r[1])) for r in await cur.fetchall()]


# ---------------------------------------------------------------- acting on slots


async def act(conn: Conn, row: ScheduleRow, slot: datetime, kind: str, overlap: ScheduleOverlapPolicy,
              at: datetime) -> str | None:
    """Acts on one slot of the (locked) schedule with the overlap policy: returns the
    action's status (started, buffered, skipped), or None if the slot was acted on before."""
    running = await running_runs(conn, row)
    buffered = await (await conn.execute(q("schedule_buffered_actions"), row.key)).fetchall()
    what: Overlap = decide(overlap, len(running), len(buffered))
    workflow_id = action_workflow_id(row.action.get("id") or row.schedule_id, slot)
    status = "skipped" if what.decision == "skip" else "buffered"  # a start is marked started by _start
    cur = await conn.execute(q("insert_schedule_action"), {
        **row.key, "slot": slot, "kind": kind, "status": status, "overlap": str(overlap),
        "workflow_id": workflow_id, "now": at})
    if await cur.fetchone() is None:
        return None  # this slot's action was taken already: once per slot
    for run_id, _ in running:
        if what.cancel_running:
            await write_input(conn, run_id, h.CANCEL_REQUESTED, {"reason": f"schedule {row.schedule_id}: overlap"})
        if what.terminate_running:
            await write_input(conn, run_id, h.TERMINATE_REQUESTED,
                              {"reason": f"schedule {row.schedule_id}: terminate_other"})
    if what.decision == "start":
        return await _start(conn, row, slot, workflow_id, at)
    return status


async def _start(conn: Conn, row: ScheduleRow, slot: datetime, workflow_id: str, at: datetime) -> str:
    """Starts the run of a taken slot, in the caller's transaction, and marks the action."""
    a = row.action
    params = lifecycle.start_params(namespace=row.namespace, workflow_id=workflow_id, workflow_type=a["workflow_type"],
                                    queue=a["queue"], args=list(a.get("args") or []),
                                    execution_timeout=a.get("execution_timeout"),
                                    # checked at create: the run's place in its queue, a slot of its key or the hold
                                    priority=Priority.from_json(a.get("priority")),
                                    concurrency_key=a.get("concurrency_key"))
    runs.set_visibility(params, {}, a.get("memo"))
    try:
        run_id: str | None = await runs.start(conn, params, "fail")
        status = "started"
    except WorkflowAlreadyStarted:  # a run of that id is open (a trigger in the same microsecond)
        run_id, status = None, "skipped"
    await conn.execute(q("mark_schedule_action"), {**row.key, "slot": slot, "status": status, "run_id": run_id,
                                                   "now": at})
    return status


async def drain_buffer(conn: Conn, row: ScheduleRow, at: datetime) -> int:
    """Starts the oldest waiting action once none of the schedule's runs is open (or, for
    one taken with allow_all, at once); returns how many still wait."""
    buffered = await (await conn.execute(q("schedule_buffered_actions"), row.key)).fetchall()
    if not buffered:
        return 0
    if await running_runs(conn, row):
        return len(buffered)
    slot, _kind, _overlap, workflow_id = buffered[0]
    await _start(conn, row, slot, workflow_id, at)
    return len(buffered) - 1


async def fire(conn: Conn, row: ScheduleRow, at: datetime) -> int:
    """One pass over a locked, unpaused schedule: acts on its due slots (the catch-up window
    applied), starts a waiting action if it may, and sets when to look next. Returns how
    many slots it acted on."""
    spec = ScheduleSpec.from_json(row.spec)
    policy = SchedulePolicy.from_json(row.policy)
    slots, until, missed = due_slots(spec, row.schedule_id, row.processed_until, at, policy.catchup_window)
    for slot in slots:
        await act(conn, row, slot, "scheduled", policy.overlap, at)
    waiting = await drain_buffer(conn, row, at)
    check = next_check(spec, row.schedule_id, until)  # at once if more were due than one pass takes
    if waiting:
        soon = at + timedelta(seconds=BUFFER_POLL_SECONDS)
        check = soon if check is None else min(check, soon)
    await conn.execute(q("update_schedule_progress"), {**row.key, "processed_until": until,
                                                       "next_check_at": check, "missed": missed})
    return len(slots)


async def fire_due(pool: db.Pool, *, limit: int = FIRE_BATCH) -> int:
    """Fires up to ``limit`` due schedules, one transaction each; returns how many it fired."""
    fired = 0
    for _ in range(limit):
        row: ScheduleRow | None = None
        try:
            async with atomic(pool) as conn:
                at = await now(conn)
                r = await (await conn.execute(q("claim_due_schedule"), {"now": at})).fetchone()
                if r is None:
                    return fired
                row = ScheduleRow(*r)
                await fire(conn, row, at)
        except (DatabaseUnavailable, asyncio.CancelledError):
            raise  # not the schedule's fault: the next pass tries again
        except Exception as exc:
            if row is None:
                raise
            log.error("schedule %s: a pass failed (%s); trying again in %.0f s", row.schedule_id, exc,
                      FAILED_PASS_DELAY_SECONDS)
            async with atomic(pool) as conn:
                await conn.execute(q("defer_schedule"), {**row.key, "now": at, "delay": FAILED_PASS_DELAY_SECONDS})
        fired += 1
    return fired


async def next_due(pool: db.Pool) -> timedelta | None:
    """How long until the earliest unpaused schedule is due (negative: overdue), or None."""
    async with atomic(pool) as conn:
        row = await (await conn.execute(q("next_schedule_check"), {"now": clock.now(conn)})).fetchone()
    return row[0] if row else None
