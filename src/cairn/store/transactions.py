"""The worker's two hot transactions (a claimed batch, a fast-path group), with their BEGIN
and COMMIT folded into their first and last statements.

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
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import AsyncClientCursor
from psycopg.rows import dict_row

from cairn.store.sql import execute_arguments, execute_statement, prepare_statements

IDLE = psycopg.pq.TransactionStatus.IDLE


async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Prepares the hot statements on a new connection (the pool's ``configure``)."""
    await conn.execute(prepare_statements())


@contextlib.asynccontextmanager
async def transaction(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """A transaction on an autocommit connection, begun by the first statement inside it
    (``execute(..., begin=True)``). It commits on exit unless a statement already did
    (``commit=True``); on an error it rolls back."""
    try:
        yield
    except BaseException:
        if conn.info.transaction_status != IDLE:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
                await conn.rollback()
        raise
    await conn.commit()  # nothing is sent when a statement committed already


async def execute(conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any], *,
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
