"""The worker's connections: its pools, the two hot transactions with their BEGIN and COMMIT
folded into their first and last statements, and the errors the worker's statements raise.

psycopg sends BEGIN and COMMIT as statements of their own: four round trips for a
transaction of two statements, where the client and the server each wake up for every
one of them (on two cores, a wake-up costs as much as the work). The hot statements are
PREPAREd by name on every worker connection (:func:`configure`, the pool's callback) and
sent as ``EXECUTE`` in a simple query, bound on the client, with ``BEGIN;`` before the
first and ``; COMMIT`` after the last: two round trips.

psycopg deallocates every prepared statement of a connection after a rollback; the first
statement of a transaction then finds its statement gone, prepares them again and retries
(see :func:`execute`). Later statements of the same transaction cannot meet that: nothing
rolls back in between without ending the transaction.

psycopg errors leave this module translated (:func:`translate`): the worker tells a
statement the database refused (:class:`Refused`), a lost deadlock (:class:`Deadlock`), a
speculation that missed (:class:`SpeculationMissed`) and a database that is away
(:class:`cairn.errors.DatabaseUnavailable`) apart, and catches nothing of psycopg's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import AsyncClientCursor
from psycopg import errors as pgerr
from psycopg.rows import dict_row

from cairn.errors import DatabaseError, Deadlock, Refused, SpeculationMissed, Transient
from cairn.store import db
from cairn.store.db import Conn
from cairn.store.sql import execute_arguments, execute_statement, prepare_statements

IDLE = psycopg.pq.TransactionStatus.IDLE
SPECULATION_MISSED = "CR001"  # complete_activities_speculated: a run is not as the cache had it


# ---------------------------------------------------------------- errors


def translate(exc: psycopg.Error) -> DatabaseError:
    """A psycopg error met by a worker statement, as the Cairn error the worker acts on;
    the psycopg error stays its ``__cause__`` (raise it ``from exc``). Its text is psycopg's,
    passwords masked."""
    text = db.redact(str(exc))
    if exc.sqlstate == SPECULATION_MISSED:
        return SpeculationMissed(text)
    if isinstance(exc, pgerr.DeadlockDetected):
        return Deadlock(text)
    if isinstance(exc, psycopg.OperationalError):  # PoolTimeout and AdminShutdown included
        return Transient(text)
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError | psycopg.ProgrammingError):
        return Refused(text, race=isinstance(exc, pgerr.UniqueViolation),
                       integrity=isinstance(exc, psycopg.IntegrityError))
    translated = db.translate(exc)
    return translated if isinstance(translated, DatabaseError) else DatabaseError(text)


# ---------------------------------------------------------------- pools and connections


def new_pool(url: str, *, min_size: int, max_size: int, options: str, hot: bool) -> db.Pool:
    """A pool of autocommit sessions with these ``options``, not yet open (the worker opens
    it as it starts); ``hot``: its connections prepare the hot statements (the engine's pool)."""
    return db.Pool(url, min_size=min_size, max_size=max_size, open=False,
                   kwargs={"autocommit": True, "options": options}, configure=configure if hot else None)


async def configure(conn: Conn) -> None:
    """Prepares the hot statements on a new connection (the pool's ``configure``)."""
    await conn.execute(prepare_statements())


@contextlib.asynccontextmanager
async def connection(pool: db.Pool) -> AsyncIterator[Conn]:
    """A pooled connection; psycopg errors of the checkout or the block come out translated."""
    try:
        async with pool.connection() as conn:
            yield conn
    except psycopg.Error as exc:
        raise translate(exc) from exc


@contextlib.asynccontextmanager
async def atomic(pool: db.Pool) -> AsyncIterator[Conn]:
    """A pooled connection inside a transaction (BEGIN and COMMIT sent on their own: the
    worker's cold paths); psycopg errors come out translated."""
    try:
        async with pool.connection() as conn, conn.transaction():
            yield conn
    except psycopg.Error as exc:
        raise translate(exc) from exc


@contextlib.asynccontextmanager
async def transaction(conn: Conn) -> AsyncIterator[None]:
    """A transaction on an autocommit connection, begun by the first statement inside it
    (``execute(..., begin=True)``). It commits on exit unless a statement already did
    (``commit=True``); on an error it rolls back. psycopg errors come out translated."""
    try:
        yield
    except BaseException as exc:
        if conn.info.transaction_status != IDLE:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
                await conn.rollback()
        if isinstance(exc, psycopg.Error):
            raise translate(exc) from exc
        raise
    try:
        await conn.commit()  # nothing is sent when a statement committed already
    except psycopg.Error as exc:
        raise translate(exc) from exc


async def execute(conn: Conn, name: str, params: dict[str, Any], *,
                  begin: bool = False, commit: bool = False,
                  ahead: tuple[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Runs a prepared hot statement (``cairn.store.sql.PREPARED``) and returns its rows;
    ``begin`` opens the transaction with it, ``commit`` commits after it, and ``ahead`` is
    a statement sent before it in the same query (its result is not returned)."""
    names: tuple[str, ...] = (name,)
    args = execute_arguments(name, params)
    if ahead is not None:
        names, args = (ahead[0], name), execute_arguments(ahead[0], ahead[1]) + args
    statement = execute_statement(*names, begin=begin, commit=commit)
    cur = AsyncClientCursor(conn, row_factory=dict_row)
    try:
        await cur.execute(statement, args)
    except psycopg.errors.InvalidSqlStatementName:
        if not begin:
            raise
        # Deallocated by psycopg after a rollback on this connection: prepare and retry.
        await conn.rollback()
        await configure(conn)
        await cur.execute(statement, args)
    for _ in range(begin + (ahead is not None)):
        cur.nextset()  # past BEGIN's empty result and the statement ahead's
    return await cur.fetchall()
