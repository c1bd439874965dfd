"""Messages on the client's side: input events in a run's inbox (signals, cancel requests),
signal-with-start, and query requests (ARCHITECTURE.md, "Invariants": the inbox protocol)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cairn.engine import history as h
from cairn.store import clock
from cairn.store import payloads as stored
from cairn.store.runs import Conn, start
from cairn.store.sql import q


async def write_input(conn: Conn, run_id: str, event_type: str, data: dict[str, Any]) -> bool:
    """Writes an input event into the run's inbox, with the stored payloads it refers to;
    False if the run is closed."""
    found = stored.links(run_id, data)
    async with conn.transaction() if found else contextlib.nullcontext():
        cur = await conn.execute(q("signal_run"), {"run_id": run_id, "type": event_type, "data": Jsonb(data)})
        written = await cur.fetchone() is not None
        if written and found:
            await stored.save(conn, found)
    return written


async def signal_with_start(conn: Conn, params: dict[str, Any], data: dict[str, Any]) -> str:
    """Starts the run unless one is open, and signals the open (or new) run, in one
    transaction (a savepoint in the caller's, if it has one). A concurrent start of the
    same id makes ``start_workflow`` wait for it (the unique index) and then insert
    nothing: the next statement sees that run."""
    async with conn.transaction():
        while True:
            run_id = await start(conn, params, "use_existing")
            if await write_input(conn, run_id, h.SIGNAL_RECEIVED, data):
                return run_id
            # The open run closed before the signal reached it: start a new one.


async def request_update(conn: Conn, *, run_id: str, update_id: str, name: str, args: list[Any]) -> tuple[bool, bool]:
    """Asks an open run for an update (``request_update``): (the run is open, this call
    wrote the request). An update id already there is not written again."""
    found = stored.links(run_id, args)
    async with conn.transaction() if found else contextlib.nullcontext():
        row = await (await conn.execute(q("request_update"), {
            "run_id": run_id, "update_id": update_id, "name": name, "args": Jsonb(args), "now": clock.now(conn),
            "data": Jsonb({"update_id": update_id, "name": name, "args": args})})).fetchone()
        assert row is not None
        if row[1] and found:
            await stored.save(conn, found)
    return bool(row[0]), bool(row[1])


async def update_with_start(conn: Conn, params: dict[str, Any], *, update_id: str, name: str,
                            args: list[Any]) -> str:
    """Starts the run unless one is open, and asks the open (or new) run for the update, in
    one transaction (as :func:`signal_with_start`)."""
    async with conn.transaction():
        while True:
            run_id = await start(conn, params, "use_existing")
            if (await request_update(conn, run_id=run_id, update_id=update_id, name=name, args=args))[0]:
                return run_id


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """An update's status (requested, accepted, rejected, completed, failed), its result or
    failure, and its run's status."""

    status: str
    result: Any
    failure: dict[str, Any] | None
    run_status: str


async def update_outcome(conn: Conn, run_id: str, update_id: str) -> UpdateOutcome | None:
    before = stored.marked()
    row = await (await conn.execute(q("update_outcome"), {"run_id": run_id, "update_id": update_id})).fetchone()
    if row is None:
        return None
    return UpdateOutcome(row[0], await stored.resolve_if(conn, before, row[1]), row[2], row[3])


async def insert_query_request(conn: Conn, *, request_id: str, run_id: str, queue: str, namespace: str,
                               workflow_type: str, name: str, args: list[Any]) -> None:
    """Asks for a query's answer (``insert_query_request``). A request already there under
    this id is an earlier try of this one, whose connection was lost: asking again is safe."""
    found = stored.links(run_id, args)
    with contextlib.suppress(psycopg.errors.UniqueViolation):
        async with conn.transaction() if found else contextlib.nullcontext():
            await stored.save(conn, found)
            await conn.execute(q("insert_query_request"), {
                "id": request_id, "run_id": run_id, "queue": queue, "namespace": namespace,
                "workflow_type": workflow_type, "name": name, "args": Jsonb(args), "now": clock.now(conn)})


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """A worker's answer to a query request: its answer, or its error."""

    answer: Any
    error: dict[str, Any] | None


async def query_answer(conn: Conn, request_id: str) -> QueryAnswer | None:
    """The request's answer, once a worker gave one."""
    before = stored.marked()
    row = await (await conn.execute(q("query_request_answer"), {"id": request_id})).fetchone()
    return None if row is None else QueryAnswer(await stored.resolve_if(conn, before, row[0]), row[1])


async def delete_query_request(conn: Conn, request_id: str) -> None:
    await conn.execute(q("delete_query_request"), {"id": request_id})
