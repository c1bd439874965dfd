"""The statements of the circuit breakers (``cairn.breakers``): a breaker's row, its
transitions and its half-open probe leases.

Every function takes a connection checked out of a store pool (autocommit, or inside a
transaction of :func:`locked`) and raises Cairn errors, not psycopg's. The decisions (the
window math, the state machine) are ``cairn.breakers``'s; here is only their I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn.errors import DatabaseError
from cairn.store import clock
from cairn.store.db import Conn, translate, translated
from cairn.store.sql import q

READ_ATTEMPTS = 3  # a concurrent first insert may hide the row from one statement


@dataclass(frozen=True, slots=True)
class BreakerState:
    """What a transition changes: the state, its generation and window (``window_data``),
    when it opened and until when, the opens in a row, the half-open round's successes, and
    (a throttle-open) the state it resumes once it ends."""

    state: str
    generation: int
    window: dict[str, Any]
    opened_at: datetime | None
    open_until: datetime | None
    consecutive_opens: int
    half_open_successes: int
    resume_to: str | None


class Counters(NamedTuple):
    """A breaker's call counters, by outcome (or what to add to them)."""

    successful: int
    failed: int
    slow: int
    not_permitted: int


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """A breaker's stored row, read at the database's time ``now``; ``config`` is the stored
    config (``BreakerConfig``'s JSON: the first writer's)."""

    name: str
    config: dict[str, Any]
    current: BreakerState
    counters: Counters
    now: datetime


def _row(r: dict[str, Any]) -> BreakerRow:
    state = BreakerState(r["state"], int(r["generation"]), dict(r["window_data"] or {}), r["opened_at"],
                         r["open_until"], int(r["consecutive_opens"]), int(r["half_open_successes"]),
                         r.get("resume_to"))
    counters = Counters(int(r["successful"]), int(r["failed"]), int(r["slow"]), int(r["not_permitted"]))
    return BreakerRow(r["name"], r["config"], state, counters, r["now"])


class LiveProbes(NamedTuple):
    """A half-open breaker's live probe leases: how many, and when the first expires."""

    live: int
    first_expiry: datetime | None


class Refusal(NamedTuple):
    """A breaker refusing calls right now: its state, until when (open), its recovery
    timeout (forced open) and the database time."""

    state: str
    open_until: datetime | None
    recovery_timeout: float
    now: datetime


class ListedBreaker(NamedTuple):
    """A breaker as ``cairn breakers`` lists it: its row and its live probes."""

    row: BreakerRow
    live_probes: int


class BreakerEvent(NamedTuple):
    """One transition of a breaker."""

    from_state: str
    to_state: str
    generation: int
    reason: str
    at: datetime


@translated
async def read(conn: Conn, name: str, config: dict[str, Any], now: datetime | None) -> BreakerRow:
    """A breaker's row, created on first use with ``config`` (the first writer's stays). No lock.

    Raises:
        DatabaseError: the row could not be read (after :data:`READ_ATTEMPTS` statements).
    """
    cur = conn.cursor(row_factory=dict_row)
    for _ in range(READ_ATTEMPTS):  # a concurrent first insert may hide the row from one statement
        await cur.execute(q("breaker_read"), {"name": name, "config": Jsonb(config), "now": clock.at(conn, now)})
        r = await cur.fetchone()
        if r is not None:
            return _row(r)
    raise DatabaseError(f"breaker {name!r} could not be read")


@translated
async def create(conn: Conn, name: str, config: dict[str, Any], now: datetime | None) -> None:
    """Makes sure the breaker's row exists (first writer's config wins)."""
    await conn.execute(q("breaker_read"), {"name": name, "config": Jsonb(config), "now": clock.at(conn, now)})


@translated
async def count_not_permitted(conn: Conn, name: str) -> None:
    """Counts a call refused by an open breaker (an increment: no lock needed)."""
    await conn.execute(q("breaker_not_permitted"), {"name": name})


@asynccontextmanager
async def locked(conn: Conn, name: str, now: datetime | None) -> AsyncIterator[BreakerRow | None]:
    """A transaction holding the breaker's row lock (``SELECT ... FOR UPDATE``): every
    transition and every windowed outcome is a read-modify-write of the row, so workers
    take turns on the lock instead of racing. Yields the row (None: no such breaker); it
    commits when the block ends, and rolls back if it raises."""
    try:
        async with conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("breaker_lock"), {"name": name, "now": clock.at(conn, now)})
            r = await cur.fetchone()
            yield None if r is None else _row(r)
    except psycopg.Error as exc:
        raise translate(exc) from None


@translated
async def write(conn: Conn, name: str, state: BreakerState, added: Counters, events: list[tuple[str, str, str]],
                now: datetime | None) -> None:
    """Under :func:`locked`: writes the breaker's new state, adds to its counters, records
    one event per transition (``(from, to, reason)``, the last one at ``state.generation``),
    and drops its probe leases when it left half-open or now admits no probe (closed,
    disabled, forced open)."""
    await conn.execute(q("breaker_write"), {
        "name": name, "state": state.state, "generation": state.generation, "window_data": Jsonb(state.window),
        "opened_at": state.opened_at, "open_until": state.open_until, "consecutive_opens": state.consecutive_opens,
        "half_open_successes": state.half_open_successes, "resume_to": state.resume_to, "now": clock.at(conn, now),
        **added._asdict()})
    gen = state.generation - len(events)
    for frm, to, reason in events:
        gen += 1
        await conn.execute(q("breaker_event"), {"name": name, "from_state": frm, "to_state": to,
                                                 "generation": gen, "reason": reason, "now": clock.at(conn, now)})
    if any(frm == "half_open" for frm, _, _ in events) or state.state in ("closed", "disabled", "forced_open"):
        await conn.execute(q("breaker_clear_probes"), {"name": name})


@translated
async def live_probes(conn: Conn, name: str, generation: int, now: datetime | None) -> LiveProbes:
    """Under :func:`locked`, half-open: drops expired probe leases and those of older
    generations, and counts the live ones."""
    cur = await conn.execute(q("breaker_live_probes"), {"name": name, "generation": generation,
                                                        "now": clock.at(conn, now)})
    r = await cur.fetchone()
    assert r is not None  # an aggregate: always one row
    return LiveProbes(int(r[0]), r[1])


@translated
async def take_probe(conn: Conn, name: str, probe_id: str, generation: int, lease_seconds: float,
                     now: datetime | None) -> None:
    """Under :func:`locked`, half-open: a probe lease for one admitted call."""
    await conn.execute(q("breaker_take_probe"), {"name": name, "probe_id": probe_id, "generation": generation,
                                                 "now": clock.at(conn, now), "lease": lease_seconds})


@translated
async def renew_probe(conn: Conn, name: str, probe_id: str, lease_seconds: float, now: datetime | None) -> None:
    """A probe still running: its lease moves on."""
    await conn.execute(q("breaker_renew_probe"), {"name": name, "probe_id": probe_id, "lease": lease_seconds,
                                                  "now": clock.at(conn, now)})


@translated
async def release_probe(conn: Conn, name: str, probe_id: str) -> None:
    """A probe's outcome is in (or its call never happened): its lease goes."""
    await conn.execute(q("breaker_release_probe"), {"name": name, "probe_id": probe_id})


@translated
async def refusing(conn: Conn, name: str, now: datetime | None) -> Refusal | None:
    """The breaker's refusal if it refuses calls right now (open before its open_until, or
    forced open); None when it would admit. One read, no lock."""
    cur = await conn.execute(q("breaker_refusing"), {"name": name, "now": clock.at(conn, now)})
    r = await cur.fetchone()
    return None if r is None else Refusal(r[0], r[1], float(r[2]), r[3])


@translated
async def delete(conn: Conn, name: str) -> bool:
    """Forgets a breaker (its probes go with it); False if there was none."""
    cur = await conn.execute(q("breaker_delete"), {"name": name})
    return cur.rowcount > 0


@translated
async def list_breakers(conn: Conn, now: datetime | None) -> list[ListedBreaker]:
    """Every breaker, by name, with its live probe count."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("list_breakers"), {"now": clock.at(conn, now)})
    return [ListedBreaker(_row(r), int(r["live_probes"])) for r in await cur.fetchall()]


@translated
async def recent_events(conn: Conn, name: str, limit: int) -> list[BreakerEvent]:
    """A breaker's last ``limit`` transitions, newest first."""
    cur = await conn.execute(q("breaker_recent_events"), {"name": name, "limit": limit})
    return [BreakerEvent(*r) for r in await cur.fetchall()]
