"""The worker's activity statements: claims, leases and heartbeats, fenced outcomes,
retries and reschedules, and the reaper's expired attempts.

Every write of an attempt is fenced by its token: a write of an attempt that was superseded
(timed out and leased again, cancelled, recorded) changes nothing and says so (False).
psycopg errors leave translated (:func:`cairn.store.transactions.translate`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn.store import clock, db
from cairn.store import payloads as stored
from cairn.store.db import Conn
from cairn.store.sql import q
from cairn.store.transactions import connection


@dataclass(frozen=True, slots=True)
class Attempt:
    """An activity attempt leased to this worker (claimed, or leased eagerly by
    ``record_workflow_tasks``)."""

    run_id: str
    seq: int
    token: int
    attempt: int
    workflow_id: str
    workflow_type: str
    activity_type: str
    queue: str
    input: Any
    options: dict[str, Any]
    scheduled_at: datetime
    started_at: datetime
    heartbeat_details: Any
    attempt_deadline: datetime | None
    schedule_deadline: datetime | None
    workflow_queue: str | None


def attempt_of(row: dict[str, Any]) -> Attempt:
    """An :class:`Attempt` from a row of ``claim_activity_tasks`` or ``record_workflow_tasks``."""
    return Attempt(str(row["run_id"]), row["seq"], row["token"], row["attempt"], row["workflow_id"],
                   row["workflow_type"], row["activity_type"], row["queue"], row["input"], row["options"] or {},
                   row["scheduled_at"], row["started_at"], row["heartbeat_details"], row["attempt_deadline"],
                   row["schedule_deadline"], row["workflow_queue"])


@dataclass(frozen=True, slots=True)
class Expired:
    """An attempt past a deadline, or whose worker stopped renewing its lease (locked by
    :func:`expired` until its transaction ends)."""

    run_id: str
    seq: int
    token: int
    attempt: int
    activity_type: str
    options: dict[str, Any]
    lease_owner: str | None
    workflow_id: str
    attempt_deadline: datetime | None
    heartbeat_deadline: datetime | None
    schedule_deadline: datetime | None
    cancel_requested: bool
    now: datetime


@dataclass(frozen=True, slots=True)
class RescheduleState:
    """What deciding a reschedule needs of the attempt's row (locked until the transaction ends)."""

    throttled_seconds: float
    schedule_deadline: datetime | None
    attempt: int
    now: datetime


async def claim(pool: db.Pool, *, namespace: str, pairs: dict[str, Any], worker: str,
                lease: float, low_lane: bool) -> list[Attempt]:
    """Leases ready attempts of the worker's (queue, activity type) ``pairs`` to ``worker``:
    priorities 1-3, then, if those fell short and ``low_lane`` (the namespace has queued
    4-5), 4-5."""
    async with connection(pool) as conn:
        cur = conn.cursor(row_factory=dict_row)
        before = stored.marked()
        params = {"namespace": namespace, **pairs, "worker": worker, "lease": lease, "now": clock.now(conn),
                  "low": False}
        await cur.execute(q("claim_activity_tasks"), params)
        rows = await cur.fetchall()
        if low_lane and len(rows) < pairs["limit"]:
            await cur.execute(q("claim_activity_tasks"), {**params, "low": True, "limit": pairs["limit"] - len(rows)})
            rows += await cur.fetchall()
        return await resolved(conn, before, [attempt_of(row) for row in rows])


async def resolved(conn: Conn, before: int, attempts: list[Attempt]) -> list[Attempt]:
    """Attempts with the stored payloads of their inputs resolved (one statement, and only
    when a reference was read since ``stored.marked()`` was ``before``)."""
    if stored.marked() == before or not attempts:
        return attempts
    inputs = await stored.resolve(conn, [[a.input, a.heartbeat_details] for a in attempts])
    return [replace(a, input=i, heartbeat_details=d) for a, (i, d) in zip(attempts, inputs, strict=True)]


async def _fenced(sql: str, params: dict[str, Any], pool: db.Pool | None, conn: Conn | None) -> bool:
    """Runs one fenced write (on ``conn``, else on a connection of ``pool``); True if it
    changed a row."""
    if conn is not None:
        if "now" in params:
            params["now"] = clock.now(conn)
        cur = await conn.execute(sql.encode(), params)
        return cur.rowcount > 0 or (cur.description is not None and await cur.fetchone() is not None)
    assert pool is not None
    async with connection(pool) as c:
        if "now" in params:
            params["now"] = clock.now(c)
        cur = await c.execute(sql.encode(), params)
        if cur.description is not None:
            return await cur.fetchone() is not None
        return cur.rowcount > 0


async def complete(pool: db.Pool | None, *, run_id: str, seq: int, token: int, event_type: str,
                   data: dict[str, Any], conn: Conn | None = None) -> bool:
    """Records an activity's outcome into its run's inbox (``complete_activity``), with the
    payloads it refers to (in one transaction)."""
    params = {"run_id": run_id, "seq": seq, "token": token, "now": None, "type": event_type, "data": Jsonb(data)}
    found = stored.links(run_id, data)
    if not found:
        return await _fenced(q("complete_activity"), params, pool, conn)
    if conn is not None:  # the caller's transaction
        await stored.save(conn, found)
        return await _fenced(q("complete_activity"), params, None, conn)
    assert pool is not None
    async with connection(pool) as c, c.transaction():
        await stored.save(c, found)
        return await _fenced(q("complete_activity"), params, None, c)


async def retry(pool: db.Pool | None, *, run_id: str, seq: int, token: int, delay: float,
                failure: dict[str, Any], beat: bool, details: Any, conn: Conn | None = None) -> bool:
    """Puts a failed attempt back after ``delay`` (``retry_activity``); False if that would
    pass its schedule-to-close deadline or the attempt was superseded."""
    return await _fenced(q("retry_activity"), {
        "run_id": run_id, "seq": seq, "token": token, "now": None, "delay": delay, "failure": Jsonb(failure),
        "beat": beat, "details": Jsonb(details) if beat else None}, pool, conn)


async def pause_exhausted(pool: db.Pool | None, *, run_id: str, seq: int, token: int, failure: dict[str, Any],
                          retry_state: str, note: str, by: str, give_back: int = 0, beat: bool = False,
                          details: Any = None, conn: Conn | None = None) -> bool:
    """``RetryPolicy(on_exhausted="pause")``: holds the activity instead of failing it
    (``pause_exhausted_activity``, fenced by the token); False if the attempt was superseded."""
    return await _fenced(q("pause_exhausted_activity"), {
        "run_id": run_id, "seq": seq, "token": token, "now": None, "failure": Jsonb(failure),
        "retry_state": retry_state, "note": note, "by": by, "give_back": give_back, "beat": beat,
        "details": Jsonb(details) if beat else None}, pool, conn)


async def release(pool: db.Pool, *, run_id: str, seq: int, token: int) -> bool:
    """Gives a leased attempt back for another worker (a draining worker's)."""
    return await _fenced(q("release_activity"), {"run_id": run_id, "seq": seq, "token": token, "now": None},
                         pool, None)


async def token_key(pool: db.Pool) -> str:
    """The key that signs task tokens (migration 0014's ``activity_token_keys``)."""
    async with connection(pool) as c:
        cur = await c.execute(q("activity_token_key"))
        row = await cur.fetchone()
        assert row is not None  # the migration inserts it
        return str(row[0])


async def detach(pool: db.Pool, *, run_id: str, seq: int, token: int, worker: str) -> bool:
    """Hands a leased attempt over to asynchronous completion (``detach_activity``); False
    if it was already recorded or superseded."""
    return await _fenced(q("detach_activity"), {"run_id": run_id, "seq": seq, "token": token, "worker": worker},
                         pool, None)


async def renew_leases(pool: db.Pool, *, beats: list[dict[str, Any]], lease: float,
                       worker: str) -> dict[tuple[str, int], bool]:
    """Renews the leases (and records the heartbeats) of ``beats`` in one statement; returns,
    per attempt still leased to ``worker``, whether its workflow asked it to stop."""
    async with connection(pool) as c:
        cur = await c.execute(q("renew_activity_leases"), {
            "beats": Jsonb(beats), "lease": lease, "worker": worker, "now": clock.now(c)})
        return {(str(a), s): bool(cancel) for a, s, cancel in await cur.fetchall()}


async def expired(conn: Conn, *, limit: int) -> list[Expired]:
    """Locks up to ``limit`` attempts past a deadline or a lease (in the caller's transaction)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("expired_activity_tasks"), {"limit": limit, "now": clock.now(conn)})
    return [Expired(str(r["run_id"]), r["seq"], r["token"], r["attempt"], r["activity_type"], r["options"] or {},
                    r["lease_owner"], r["workflow_id"], r["attempt_deadline"], r["heartbeat_deadline"],
                    r["schedule_deadline"], bool(r["cancel_requested"]), r["now"])
            for r in await cur.fetchall()]


async def reschedule_state(conn: Conn, *, run_id: str, seq: int, token: int) -> RescheduleState | None:
    """Locks the attempt's row and reads what a reschedule decides on; None if the attempt
    was superseded (in the caller's transaction)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("reschedule_state"), {"run_id": run_id, "seq": seq, "token": token, "now": clock.now(conn)})
    row = await cur.fetchone()
    if row is None:
        return None
    return RescheduleState(float(row["throttled_seconds"]), row["schedule_deadline"], int(row["attempt"]),
                           row["now"])


async def reschedule(conn: Conn, *, run_id: str, seq: int, token: int, delay: float, counted: float,
                     failure: dict[str, Any]) -> None:
    """Puts the attempt back after ``delay`` without counting it (``reschedule_activity``)."""
    await conn.execute(q("reschedule_activity"), {
        "run_id": run_id, "seq": seq, "token": token, "now": clock.now(conn), "delay": delay, "counted": counted,
        "failure": Jsonb(failure)})
