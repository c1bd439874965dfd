"""The worker's housekeeping statements: due timers, the next moment work is due, queue
depth, the LISTEN connection, and the schema check at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from cairn.store import clock, db
from cairn.store.sql import q
from cairn.store.transactions import connection, translate

CHANNELS = ("cairn_workflow", "cairn_activity", "cairn_timer", "cairn_query")  # what the worker LISTENs to


async def fire_due_timers(pool: db.Pool, *, limit: int) -> tuple[int, list[str]]:
    """Turns up to ``limit`` due timers into inbox events; returns how many fired and the
    workflow queues of the tasks they made ready."""
    async with connection(pool) as c:
        cur = await c.execute(q("fire_due_timers"), {"limit": limit, "now": clock.now(c)})
        rows = await cur.fetchall()
    return (int(rows[0][2]) if rows else 0), [r[0] for r in rows]


async def place_due_retries(pool: db.Pool, *, limit: int) -> int:
    """Places up to ``limit`` due bookings of ``retry_places`` (keyed or prioritised activity
    retries, a keyed or prioritised run's failed or delayed workflow task) in the claim
    order (``place_due_retries``); returns how many it placed or dropped (a booking whose
    task another transaction holds is kept for a later pass)."""
    async with connection(pool) as c:
        row = await (await c.execute(q("place_due_retries"), {"limit": limit, "now": clock.now(c)})).fetchone()
    return int(row[1]) if row else 0


@dataclass(frozen=True, slots=True)
class Due:
    """``next_due``: how long until the earliest work of the worker's pairs is due (negative:
    overdue; None if nothing is scheduled), and the kinds of work its namespace ever queued at
    priority 4 or 5 (the claims' second lane)."""

    wait: timedelta | None
    low_lanes: frozenset[str]


async def next_due(pool: db.Pool, params: dict[str, Any]) -> Due:
    """When the worker's next work falls due (``params``: its pairs), and its namespace's lanes."""
    async with connection(pool) as c:
        if (now := clock.now(c)) is not None:
            params = {**params, "now": now}
        row = await (await c.execute(q("next_due"), params)).fetchone()
    return Due(row[0], frozenset(row[1])) if row else Due(None, frozenset())


async def queue_depth(pool: db.Pool, *, queues: list[str], namespace: str, cap: int) -> list[tuple[str, str, int]]:
    """Ready tasks per (queue, kind), each count capped at ``cap``."""
    async with connection(pool) as c:
        cur = await c.execute(q("queue_depth"), {"queues": queues, "namespace": namespace, "now": clock.now(c),
                                                 "cap": cap})
        return [(r[0], r[1], int(r[2])) for r in await cur.fetchall()]


async def listen(url: str, on_listening: Callable[[], None]) -> AsyncIterator[tuple[str, str]]:
    """LISTENs to :data:`CHANNELS` on a dedicated connection and yields (channel, payload)
    of each notification; ``on_listening`` is called once the LISTENs are in place. Ends
    with a translated error when the connection is lost."""
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for channel in CHANNELS:
                await conn.execute(f"LISTEN {channel}")
            on_listening()
            async for note in conn.notifies():
                yield note.channel, note.payload
    except psycopg.Error as exc:
        raise translate(exc) from exc
