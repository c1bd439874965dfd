"""The statements of the fleet rate limits (``cairn.ratelimits``): a deployment's row lock,
its buckets, tickets and concurrency leases.

Every function takes a connection checked out of a store pool (autocommit, or inside the
transaction of :func:`locked`) and raises Cairn errors, not psycopg's. Which bucket a
request goes to is ``cairn.ratelimits``'s arithmetic; here is only its I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from cairn.store import clock
from cairn.store.db import Conn, translate, translated
from cairn.store.sql import q


class Locked(NamedTuple):
    """A deployment's row, locked: the time read after the lock, and the last retry time
    handed to a refused caller without a ticket."""

    now: datetime
    queue_tail: datetime | None


class Usage(NamedTuple):
    """A deployment's buckets from the window on (future ones, tickets, included).

    Attributes:
        buckets: ``[start epoch, requests, tokens]`` per bucket, oldest first.
        leases: the live concurrency leases.
        first_expiry: when the first of them expires.
        ticket: the caller's ticket, ``(bucket start epoch, tokens)``, if it holds one.
    """

    buckets: list[list[Any]]
    leases: int
    first_expiry: datetime | None
    ticket: tuple[float, int] | None


@asynccontextmanager
async def locked(conn: Conn, deployment: str, now: datetime | None) -> AsyncIterator[Locked]:
    """A transaction holding the deployment's row lock (the row is made on first use):
    reservations of one deployment take turns on it, so two workers cannot both take the
    last request of a window. It commits when the block ends, and rolls back if it raises."""
    try:
        async with conn.transaction():
            cur = await conn.execute(q("rate_limit_lock"), {"deployment": deployment, "now": clock.at(conn, now)})
            r = await cur.fetchone()
            assert r is not None  # an upsert's RETURNING: always one row
            yield Locked(r[0], r[1])
    except psycopg.Error as exc:
        raise translate(exc) from None


@translated
async def usage(conn: Conn, deployment: str, now: datetime, oldest: datetime, holder: str) -> Usage:
    """Under :func:`locked`: drops the buckets wholly before the window (``oldest`` and
    older), the tickets counted in them and the expired leases, then reads what is left."""
    cur = await conn.execute(q("rate_limit_usage"), {"deployment": deployment, "now": now, "oldest": oldest,
                                                     "holder": holder})
    r = await cur.fetchone()
    assert r is not None  # scalar subqueries: always one row
    buckets, leases, first_expiry, ticket = r
    return Usage(buckets, int(leases), first_expiry,
                 None if ticket is None else (float(ticket[0]), int(ticket[1])))


@translated
async def ticket_used(conn: Conn, deployment: str, holder: str | None) -> None:
    """Under :func:`locked`: the holder came back in its ticket's bucket, where its request
    is counted already."""
    await conn.execute(q("rate_limit_ticket_used"), {"deployment": deployment, "holder": holder})


@translated
async def ticket_dropped(conn: Conn, deployment: str, holder: str | None, window_start: datetime,
                         tokens: int) -> None:
    """Under :func:`locked`: the holder came back after its ticket's bucket; its request
    leaves that bucket."""
    await conn.execute(q("rate_limit_ticket_dropped"), {"deployment": deployment, "holder": holder,
                                                        "window_start": window_start, "tokens": tokens})


@translated
async def take(conn: Conn, deployment: str, bucket: datetime, tokens: int) -> None:
    """Under :func:`locked`: adds a request and its tokens to a bucket."""
    await conn.execute(q("rate_limit_take"), {"deployment": deployment, "current": bucket, "tokens": tokens})


@translated
async def lease(conn: Conn, lease_id: str, deployment: str, now: datetime, lease_seconds: float) -> None:
    """A concurrency slot for one call; it frees itself after ``lease_seconds``."""
    await conn.execute(q("rate_limit_lease"), {"id": lease_id, "deployment": deployment, "now": now,
                                               "lease": lease_seconds})


@translated
async def displace(conn: Conn, deployment: str, priority: int, after: datetime, slot: datetime,
                   tokens: int | None) -> datetime | None:
    """Under :func:`locked`: the soonest ticket of lower priority between ``after`` and
    ``slot`` (of the same ``tokens``, unless None) moves to ``slot``; returns the bucket it
    left, or None when there is none."""
    cur = await conn.execute(q("rate_limit_displace"), {"deployment": deployment, "priority": priority,
                                                        "after": after, "slot": slot, "tokens": tokens})
    r = await cur.fetchone()
    return None if r is None else r[0]


@translated
async def book(conn: Conn, deployment: str, holder: str, ticket: datetime, slot: datetime, tokens: int,
               priority: int) -> None:
    """Under :func:`locked`: a refused caller's ticket for bucket ``ticket``, and its
    request counted in ``slot``, in one statement."""
    await conn.execute(q("rate_limit_book"), {"deployment": deployment, "holder": holder, "current": ticket,
                                              "slot": slot, "tokens": tokens, "priority": priority})


@translated
async def queue(conn: Conn, deployment: str, queue_tail: datetime) -> None:
    """Under :func:`locked`: the last retry time handed to a refused caller."""
    await conn.execute(q("rate_limit_queue"), {"deployment": deployment, "queue_tail": queue_tail})


@translated
async def settle(conn: Conn, deployment: str, window_start: datetime, delta: int, lease_id: str) -> None:
    """Corrects a bucket by ``delta`` tokens and frees the lease (increments: no lock)."""
    await conn.execute(q("rate_limit_settle"), {"deployment": deployment, "window_start": window_start,
                                                "delta": delta, "id": lease_id})


@translated
async def cancel(conn: Conn, deployment: str, window_start: datetime, tokens: int, lease_id: str) -> None:
    """Gives a reservation's request and tokens back to its bucket and frees its lease
    (increments: no lock)."""
    await conn.execute(q("rate_limit_cancel"), {"deployment": deployment, "window_start": window_start,
                                                "tokens": tokens, "id": lease_id})
