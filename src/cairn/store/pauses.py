"""Pause and resume, the client's side (migration 0019): a run, one activity, or activity
types and queues namespace-wide.

Paused work is out of the claim indexes (ARCHITECTURE.md, "Invariants": pauses), so these
statements only move rows in and out of them:

- a run's pause is its workflow task row's (a placeholder row when the run had no task),
  taken under the task row's lock, waiting for a worker mid-task; its activities are held;
- an activity's own pause is its row's (an operator's, or its retry policy's when the
  attempts or the throttle budget ran out, written by the worker: ``cairn.store.activities``);
- a row of ``activity_pauses`` holds every attempt of a type and/or on a queue, read by the
  activity claim per (queue, type) pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn.engine import history as h
from cairn.store import clock
from cairn.store.runs import Conn
from cairn.store.sql import q


@dataclass(frozen=True, slots=True)
class RunPaused:
    """What pausing a run did: its status (anything but ``running``: nothing was written),
    its pause (``note``, ``by``, ``at``) and how many of its activities it held."""

    status: str | None
    pause: dict[str, Any] | None
    activities: int


async def pause_run(conn: Conn, *, namespace: str, run_id: str, note: str, by: str) -> RunPaused:
    """Pauses a running run in one transaction: its workflow task (waiting for a worker
    mid-task) and its activities. A run paused already keeps its pause. Rolled back, and
    ``status`` says why, when the run is not running."""
    params: dict[str, Any] = {"run_id": run_id, "namespace": namespace, "now": clock.now(conn),
                              "pause": Jsonb({"note": note, "by": by})}
    cur = conn.cursor(row_factory=dict_row)
    closed: RunPaused | None = None
    async with conn.transaction():
        await conn.execute(q("pause_run_task"), params)
        row = await (await cur.execute(q("pause_run"), params)).fetchone()
        if row is None or row["status"] != "running":
            # Closed (or gone) while we waited for its task: the placeholder goes with the rest.
            closed = RunPaused(None if row is None else str(row["status"]), None, 0)
            raise psycopg.Rollback()
        return RunPaused("running", _public(row["pause"]), int(row["activities"]))
    assert closed is not None
    return closed


@dataclass(frozen=True, slots=True)
class RunUnpaused:
    """What resuming a run did: whether it was paused, and how many of its activities it
    freed."""

    was_paused: bool
    activities: int


async def unpause_run(conn: Conn, *, run_id: str) -> RunUnpaused:
    """Resumes a paused run: its task (and the activities held only by the run's pause) can
    be claimed at once. Nothing changes for a run that is not paused."""
    params = {"run_id": run_id, "now": clock.now(conn)}
    async with conn.transaction():
        # Lock first, read after (a new snapshot): an event written while we waited for a
        # worker holding the row is seen, so a placeholder with an inbox event stays.
        await conn.execute(q("lock_workflow_task"), params)
        cur = conn.cursor(row_factory=dict_row)
        row = await (await cur.execute(q("unpause_run"), params)).fetchone()
    assert row is not None
    return RunUnpaused(bool(row["was_paused"]), int(row["activities"]))


@dataclass(frozen=True, slots=True)
class ActivityPaused:
    """An activity an operator paused: its type and queue, whether an attempt is running
    (it goes on) and its pause."""

    activity_type: str
    queue: str
    running: bool
    pause: dict[str, Any]


async def pause_activity(conn: Conn, *, run_id: str, seq: int, note: str, by: str) -> ActivityPaused | None:
    """Pauses one pending activity; None if it has no pending attempt (it has its outcome)."""
    cur = conn.cursor(row_factory=dict_row)
    row = await (await cur.execute(q("pause_activity"), {
        "run_id": run_id, "seq": seq, "now": clock.now(conn),
        "pause": Jsonb({"reason": "operator", "note": note, "by": by})})).fetchone()
    if row is None:
        return None
    return ActivityPaused(row["activity_type"], row["queue"], bool(row["running"]), _public(row["pause"]) or {})


@dataclass(frozen=True, slots=True)
class ActivityUnpaused:
    """What lifting an activity's own pause did: whether it was paused, and whether it is
    still held (its run is paused)."""

    was_paused: bool
    held: bool


async def unpause_activity(conn: Conn, *, run_id: str, seq: int, reset_attempts: bool) -> ActivityUnpaused | None:
    """Lifts one activity's own pause; None if it has no pending attempt."""
    cur = conn.cursor(row_factory=dict_row)
    row = await (await cur.execute(q("unpause_activity"), {
        "run_id": run_id, "seq": seq, "now": clock.now(conn), "reset": reset_attempts})).fetchone()
    if row is None:
        return None
    return ActivityUnpaused(bool(row["was_paused"]), bool(row["held"]))


async def fail_activity(conn: Conn, *, run_id: str, seq: int, failure: dict[str, Any]) -> int | None:
    """An operator fails a pending activity for good (``ActivityFailed``, the inbox way, as
    a worker records it): fenced by the token of its row, locked meanwhile, so an attempt
    still running is superseded (its late result changes nothing). Returns the attempts it
    had made; None if it has no pending attempt or its run is closed."""
    cur = conn.cursor(row_factory=dict_row)
    async with conn.transaction():
        row = await (await cur.execute(q("lock_pending_activity"), {"run_id": run_id, "seq": seq})).fetchone()
        if row is None or row["status"] != "running":
            return None
        attempts = int(row["attempt"])
        data = {"activity_seq": seq, "failure": failure, "attempts": attempts, "retry_state": "non_retryable"}
        await conn.execute(q("complete_activity"), {"run_id": run_id, "seq": seq, "token": row["token"],
                                                    "type": h.ACTIVITY_FAILED, "data": Jsonb(data)})
        return attempts


async def pause_activities(conn: Conn, *, namespace: str, activity_type: str, queue: str, note: str,
                           by: str) -> bool:
    """Pauses the attempts of ``activity_type`` ('': any) on ``queue`` ('': any),
    namespace-wide; False if that pause was there already (it keeps its note)."""
    cur = await conn.execute(q("pause_activity_type"), {
        "namespace": namespace, "activity_type": activity_type, "queue": queue, "note": note, "by": by,
        "now": clock.now(conn)})
    return await cur.fetchone() is not None


async def unpause_activities(conn: Conn, *, namespace: str, activity_type: str, queue: str) -> bool:
    """Lifts a :func:`pause_activities` pause and wakes its queues; False if there was none."""
    cur = await conn.execute(q("unpause_activity_type"), {
        "namespace": namespace, "activity_type": activity_type, "queue": queue})
    row = await cur.fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class PauseRow:
    """One thing paused (``list_pauses``)."""

    kind: str  # run, activity, activity_type, queue
    workflow_id: str | None
    run_id: str | None
    seq: int | None
    type: str | None  # the run's workflow type, the activity's type, the paused type
    queue: str | None
    pause: dict[str, Any]
    last_failure: dict[str, Any] | None
    attempt: int | None
    at: datetime | None


async def list_pauses(conn: Conn, namespace: str) -> list[PauseRow]:
    cur = conn.cursor(row_factory=dict_row)
    rows = await (await cur.execute(q("list_pauses"), {"namespace": namespace})).fetchall()
    return [PauseRow(r["kind"], r["workflow_id"], r["run_id"], r["seq"], r["type"], r["queue"], r["pause"] or {},
                     r["last_failure"], r["attempt"], r["at"]) for r in rows]


def _public(pause: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pause as callers see it (the placeholder mark is the store's business)."""
    if pause is None:
        return None
    return {k: v for k, v in pause.items() if k != "placeholder"}
