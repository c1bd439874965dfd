"""Workflow time: the database's clock, or a test's virtual one (the clock seam).

Every statement that reads the time takes ``coalesce(%(now)s::timestamptz, now())`` and gets
its ``now`` from :func:`now`. Outside a time-skipping test environment
(``cairn.testing.WorkflowEnvironment.start_time_skipping``) no virtual clock exists: :func:`now`
is None, so the database's ``now()`` decides, and the hot path pays one dict check (no
statement, no table read, the same statements).

A :class:`VirtualClock` registered for a database (:func:`register`) makes every statement
this process sends to that database read the database's time plus the clock's offset. The
offset only grows (time jumps forward, never back), so a row that took the column default
``now()`` (a task made ready by an upsert) is in the virtual past, ready at once: the same
meaning the default has outside a test. A database is told apart by its name and port, read
from the session (``conn.info``): no round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import psycopg

from cairn.store import db
from cairn.store.db import Conn
from cairn.store.sql import q


class _Info(Protocol):
    @property
    def dbname(self) -> str: ...

    @property
    def port(self) -> int: ...


class _Session(Protocol):
    """A psycopg connection, sync or async (what the clock reads of it: ``info``)."""

    @property
    def info(self) -> _Info: ...


Key = tuple[str, int]  # (database name, port)


class VirtualClock:
    """The virtual time of one database: the real time (the database's, measured once at
    :func:`register`) plus an offset that only grows.

    Attributes:
        offset: seconds added to this host's clock (the database's clock skew included).
    """

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> datetime:
        """The virtual time."""
        return datetime.fromtimestamp(time.time() + self.offset, UTC)

    def advance_to(self, when: datetime) -> bool:
        """Moves the clock forward to ``when`` (never back); True if it moved."""
        gap = (when - self.now()).total_seconds()
        if gap <= 0:
            return False
        self.offset += gap
        return True


_CLOCKS: dict[Key, VirtualClock] = {}  # empty outside a time-skipping test environment


def key_of(conn: _Session) -> Key:
    """The key of the database ``conn`` is connected to."""
    return conn.info.dbname, int(conn.info.port)


def now(conn: _Session) -> datetime | None:
    """The ``now`` parameter of a statement sent on ``conn``: None (the database's clock)
    unless a virtual clock is registered for its database."""
    if not _CLOCKS:
        return None
    clock = _CLOCKS.get(key_of(conn))
    return None if clock is None else clock.now()


def at(conn: _Session, pinned: datetime | None) -> datetime | None:
    """``pinned`` if given (a test pins the time), else :func:`now`."""
    return pinned if pinned is not None else now(conn)


def timestamp(conn: _Session, fallback: float) -> float:
    """Workflow time as a Unix timestamp where the caller has its own estimate of the
    database's clock (``fallback``): the virtual time if a clock is registered."""
    if not _CLOCKS:
        return fallback
    clock = _CLOCKS.get(key_of(conn))
    return fallback if clock is None else clock.now().timestamp()


def register(conn: _Session, database_now: datetime) -> VirtualClock:
    """Registers a virtual clock for ``conn``'s database, starting at ``database_now`` (the
    database's clock, read on ``conn``), and returns it.

    Raises:
        RuntimeError: the database has a virtual clock already (one environment at a time).
    """
    key = key_of(conn)
    if key in _CLOCKS:
        raise RuntimeError(f"database {key[0]!r} already has a time-skipping environment in this process")
    clock = _CLOCKS[key] = VirtualClock(database_now.timestamp() - time.time())
    return clock


def unregister(clock: VirtualClock) -> None:
    """Removes ``clock``: its database's statements read the database's clock again."""
    for key, registered in list(_CLOCKS.items()):
        if registered is clock:
            del _CLOCKS[key]


def active() -> bool:
    """True if a virtual clock is registered in this process (a time-skipping test runs)."""
    return bool(_CLOCKS)


# ---------------------------------------------------------------- the skipper's reads


@dataclass(frozen=True, slots=True)
class SkipState:
    """What a time-skipping environment sees of its database at a virtual moment.

    Attributes:
        busy: something can run now (see ``time_skip_state`` in ``queries.sql``).
        next_due: the earliest moment something falls due, if any (with ``busy`` False it is
            after ``now``).
        now: the virtual moment read at.
    """

    busy: bool
    next_due: datetime | None
    now: datetime


async def skip_state(conn: Conn, clock: VirtualClock) -> SkipState:
    """Reads :class:`SkipState` at ``clock``'s time, in one statement."""
    try:
        row = await (await conn.execute(q("time_skip_state"), {"now": clock.now()})).fetchone()
    except psycopg.Error as exc:
        raise db.translate(exc) from exc
    assert row is not None
    return SkipState(bool(row[0]), row[1], row[2])


async def wake_workers(conn: Conn) -> None:
    """Wakes the maintenance loop of every worker on ``conn``'s database (``cairn_timer``)."""
    try:
        await conn.execute(q("time_skip_wake"))
    except psycopg.Error as exc:
        raise db.translate(exc) from exc


async def start(url: str) -> VirtualClock:
    """Registers a virtual clock for the database at ``url``, starting at the database's
    time (read once, so a server whose clock is off from this host's is followed)."""
    conn = await db.connect_async(url)
    try:
        row = await (await conn.execute(q("db_now"))).fetchone()
        assert row is not None
        return register(conn, row[0])
    except psycopg.Error as exc:
        raise db.translate(exc) from exc
    finally:
        await conn.close()
