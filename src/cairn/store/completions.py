"""Asynchronous activity completion, the client's side: an outside system completes, fails
or heartbeats an attempt by its task token (``cairn.activity.raise_complete_async``).

Each call is one transaction: the token's MAC is checked against the database's key, the
activity's row is locked (neither the reaper nor a worker changes it until the commit), and
the write is fenced by the token's attempt, so a stale token writes nothing. An outcome
goes the inbox way (``complete_activity``), as any worker's that cannot run the workflow
task itself; a retry deletes and re-inserts the row (the client role updates only the
heartbeat columns).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn.activity import TaskToken
from cairn.errors import InputValidationError, StaleTaskToken
from cairn.store import clock
from cairn.store import payloads as stored
from cairn.store.runs import Conn
from cairn.store.sql import q


@dataclass(frozen=True, slots=True)
class OpenAttempt:
    """The attempt a valid, current task token names (its row locked for the transaction)."""

    run_id: str
    seq: int
    token: int
    attempt: int
    activity_type: str
    options: dict[str, Any]
    cancel_requested: bool
    workflow_id: str
    now: datetime


@contextlib.asynccontextmanager
async def open_attempt(conn: Conn, token: TaskToken) -> AsyncIterator[OpenAttempt]:
    """A transaction holding the lock of the attempt ``token`` names.

    Raises:
        InputValidationError: the token was not made by this database.
        StaleTaskToken: the token's attempt cannot be completed any more.
    """
    async with conn.transaction():
        cur = await conn.execute(q("activity_token_key"))
        key = await cur.fetchone()
        if key is None or not token.signed_with(str(key[0])):
            raise InputValidationError("not a valid task token for this database (its signature does not match)")
        dcur = conn.cursor(row_factory=dict_row)
        await dcur.execute(q("lock_activity_attempt"), {"run_id": token.run_id, "seq": token.seq,
                                                        "now": clock.now(conn)})
        row = await dcur.fetchone()
        if row is None:
            scur = await conn.execute(q("activity_run_status"), {"run_id": token.run_id})
            status = await scur.fetchone()
            if status is not None and status[0] != "running":
                raise StaleTaskToken(f"the activity's run {token.run_id} is {status[0]}: the activity takes no "
                                     "completion", reason="run_closed")
            raise StaleTaskToken(f"activity {token.seq} of run {token.run_id} has no open attempt: it was "
                                 "completed, failed or cancelled already", reason="done")
        if row["token"] != token.token:
            raise StaleTaskToken(
                f"this task token is of an earlier attempt of activity {row['activity_type']} (seq {token.seq}, "
                f"run {token.run_id}): it timed out or failed, and attempt {row['attempt']} superseded it",
                reason="superseded")
        yield OpenAttempt(token.run_id, token.seq, row["token"], row["attempt"], row["activity_type"],
                          row["options"] or {}, bool(row["cancel_requested"]), row["workflow_id"], row["now"])


async def record(conn: Conn, attempt: OpenAttempt, event_type: str, data: dict[str, Any]) -> bool:
    """Records the activity's outcome into its run's inbox (``complete_activity``, fenced),
    with the stored payload of a large result (the caller's transaction)."""
    await stored.save(conn, stored.links(attempt.run_id, data))
    cur = await conn.execute(q("complete_activity"), {
        "run_id": attempt.run_id, "seq": attempt.seq, "token": attempt.token, "now": clock.now(conn),
        "type": event_type, "data": Jsonb(data)})
    return await cur.fetchone() is not None


async def retry(conn: Conn, attempt: OpenAttempt, *, delay: float, failure: dict[str, Any]) -> bool:
    """Puts the failed attempt back after ``delay`` (``retry_activity_by_token``); False if
    that would pass its schedule-to-close deadline."""
    cur = await conn.execute(q("retry_activity_by_token"), {
        "run_id": attempt.run_id, "seq": attempt.seq, "token": attempt.token, "now": clock.now(conn), "delay": delay,
        "failure": Jsonb(failure)})
    return await cur.fetchone() is not None


async def heartbeat(conn: Conn, attempt: OpenAttempt, details: Any) -> bool:
    """Records a heartbeat (``heartbeat_activity_by_token``); returns whether the workflow
    asked the activity to stop."""
    cur = await conn.execute(q("heartbeat_activity_by_token"), {
        "run_id": attempt.run_id, "seq": attempt.seq, "token": attempt.token, "now": clock.now(conn),
        "details": Jsonb(details)})
    row = await cur.fetchone()
    return bool(row and row[0])
