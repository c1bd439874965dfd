"""Runs on the client's side: the start loop every start path shares, a run's row, its
outcome and history, listings, and running a call on a pooled connection with retries.

The layers above hand in the store's own handles (a :class:`~cairn.store.db.Pool`, or a
:data:`Conn` they got from one) and get back small typed rows; psycopg errors leave the
store translated (:func:`retrying`, :func:`start_in`, :func:`start_sync`), except inside
the worker's own transactions, whose caller handles them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn.engine.history import Event
from cairn.errors import WorkflowAlreadyStarted, WorkflowIdReuseRefused
from cairn.store import clock, db, workers
from cairn.store import payloads as stored
from cairn.store.filters import Filter
from cairn.store.sql import q
from cairn.store.workers import Unserved

Conn = db.Conn  # a pooled connection, or a caller's own (start with conn=)
SyncConn = psycopg.Connection[Any]  # a caller's own sync connection (SyncClient.start with conn=)
T = TypeVar("T")
Op = Callable[[Conn], Awaitable[T]]

# A call that loses its connection runs again on a fresh one, backing off from the first
# delay to the longest (see retrying).
RETRY_FIRST_DELAY_SECONDS = 0.1
RETRY_MAX_DELAY_SECONDS = 2.0


# ---------------------------------------------------------------- running a call


async def retrying(pool: db.Pool, op: Op[T], *, wait: float | None,
                   lost: tuple[str, str] | None = None) -> T:
    """Runs ``op`` on a pooled connection until it succeeds, backing off from the first
    delay to the longest, for up to ``wait`` seconds (None: for as long as it takes). It
    runs again after a lost connection and after a refusal by a read-only session, which
    did nothing. With ``lost`` = (what, check), ``op`` is a write not to repeat blindly: a
    connection lost once it may have been sent raises ``OutcomeUnknown`` saying ``what`` it
    was and how to ``check`` it.

    Raises:
        DatabaseUnavailable: the database stayed out of reach for ``wait`` seconds.
        DatabaseError: another database error (translated, never a psycopg one).
    """
    loop = asyncio.get_running_loop()
    deadline = None if wait is None else loop.time() + wait
    delay = RETRY_FIRST_DELAY_SECONDS
    while True:
        sent = False
        try:
            async with pool.connection() as c:
                sent = True
                return await op(c)
        except psycopg.Error as exc:
            if sent and lost is not None and db.connection_lost(exc):
                raise db.translate_write(exc, what=lost[0], check=lost[1]) from None
            again = db.connection_lost(exc) or db.read_only_refusal(exc)
            if not again or (deadline is not None and loop.time() + delay > deadline):
                raise db.translate(exc) from None
        await asyncio.sleep(delay)
        delay = min(2 * delay, RETRY_MAX_DELAY_SECONDS)


async def translated(op: Awaitable[T]) -> T:
    """``op`` on a caller's own connection, its psycopg errors translated (theirs to retry)."""
    try:
        return await op
    except psycopg.Error as exc:
        raise db.translate(exc) from None


# ---------------------------------------------------------------- starting


def set_visibility(params: dict[str, Any], attrs: Mapping[str, Any], memo: Mapping[str, Any] | None) -> None:
    """Adds checked search attributes and memo to ``start_workflow``'s parameters;
    non-empty attributes also go into the ``WorkflowStarted`` data."""
    params["search_attributes"] = Jsonb(dict(attrs))
    params["memo"] = Jsonb(dict(memo)) if memo is not None else None
    if attrs:
        params["data"] = Jsonb({**params["data"].obj, "search_attributes": dict(attrs)})


def started_run_id(row: Any, existing: Any, params: dict[str, Any], policy: str) -> str | None:
    """The outcome of one start attempt: the new or existing run id, or None to try again."""
    if row is not None:
        return str(row[0])
    if existing is None:  # the open run closed between the two statements: start anew
        return None
    if str(existing[0]) == str(params["run_id"]):  # this start's own run: an earlier try committed
        return str(existing[0])
    if len(existing) > 2 and existing[2] != "running":  # the id reuse policy refused
        raise WorkflowIdReuseRefused(params["workflow_id"], str(existing[0]), str(existing[2]),
                                     str(params.get("id_reuse_policy")))
    if policy == "use_existing":
        return str(existing[0])
    raise WorkflowAlreadyStarted(params["workflow_id"], str(existing[0]))


async def start(conn: Conn, params: dict[str, Any], policy: str, *, lock: bool = True) -> str:
    """The start loop: inserts the run unless its workflow id is taken, applies the id reuse
    policy, and tries again if the open run closed between the two statements. Returns the
    run id (an existing open run's with ``policy="use_existing"``).

    A policy that reads the id's closed runs first takes ``lock_open_run`` (see
    queries.sql), in a transaction (a savepoint inside the caller's) — unless ``lock`` is
    False (a child start inside a worker's task transaction, which never took it).

    Raises:
        WorkflowAlreadyStarted: the id has an open run (``policy="fail"``).
        WorkflowIdReuseRefused: the id reuse policy refused because of a closed run.
    """
    reads_closed = lock and params.get("id_reuse_policy") != "allow_duplicate"
    params["now"] = clock.now(conn)
    found = _input_links(params)  # stored payloads of the input: written with the run, atomically
    while True:
        async with conn.transaction() if reads_closed or found else contextlib.nullcontext():
            if reads_closed:
                await conn.execute(q("lock_open_run"), params)
            row = await (await conn.execute(q("start_workflow"), params)).fetchone()
            existing = None if row else await (await conn.execute(q("open_run_by_workflow_id"), params)).fetchone()
            if row is not None and found:
                await stored.save(conn, found)
        run_id = started_run_id(row, existing, params, policy)
        if run_id is not None:
            return run_id


def _input_links(params: dict[str, Any]) -> list[stored.Link]:
    """The stored payloads a start's ``WorkflowStarted`` refers to, linked to its new run."""
    data = params["data"]
    return stored.links(str(params["run_id"]), data.obj if isinstance(data, Jsonb) else data)


def start_sync(conn: SyncConn, params: dict[str, Any], policy: str) -> str:
    """:func:`start` on a caller's sync connection (in its transaction), errors translated."""
    reads_closed = params.get("id_reuse_policy") != "allow_duplicate"
    params["now"] = clock.now(conn)
    found = _input_links(params)
    while True:
        try:
            with conn.transaction() if reads_closed or found else contextlib.nullcontext():
                if reads_closed:
                    conn.execute(q("lock_open_run"), params)
                row = conn.execute(q("start_workflow"), params).fetchone()
                existing = None if row else conn.execute(q("open_run_by_workflow_id"), params).fetchone()
                if row is not None and found:
                    stored.save_sync(conn, found)
        except psycopg.Error as exc:
            raise db.translate(exc) from None
        run_id = started_run_id(row, existing, params, policy)
        if run_id is not None:
            return run_id


async def run_exists(conn: Conn, params: dict[str, Any]) -> bool:
    """Whether the run ``params["run_id"]`` (of that namespace and workflow id) exists."""
    return await (await conn.execute(q("get_run"), params)).fetchone() is not None


@dataclass(frozen=True, slots=True)
class RegisteredType:
    """Where workers registered a workflow type (``get_workflow_type``)."""

    queue: str
    input_schema: dict[str, Any] | None


async def registered_types(conn: Conn, namespace: str, name: str) -> tuple[list[RegisteredType], tuple[str, ...]]:
    """The queues where workflow type ``name`` is registered and, if none, every registered
    workflow type's name (a typo? the warning lists them)."""
    rows = await (await conn.execute(q("get_workflow_type"), {"namespace": namespace, "name": name})).fetchall()
    known: tuple[str, ...] = ()
    if not rows:
        known = tuple(await workflow_type_names(conn, namespace))
    return [RegisteredType(r[1], r[2]) for r in rows], known


async def workflow_type_names(conn: Conn, namespace: str) -> list[str]:
    """The registered workflow types' names."""
    return [str(r[0]) for r in await (await conn.execute(q("list_workflow_types"),
                                                         {"namespace": namespace})).fetchall()]


# ---------------------------------------------------------------- reading runs


@dataclass(frozen=True, slots=True)
class Run:
    """A run's row (``get_run``, ``latest_run_by_workflow_id``)."""

    run_id: str
    namespace: str
    workflow_id: str
    workflow_type: str
    queue: str
    status: str
    created_at: datetime
    closed_at: datetime | None
    failure: dict[str, Any] | None


async def run(conn: Conn, namespace: str, workflow_id: str, run_id: str | None) -> Run | None:
    """Run ``run_id`` of the workflow id (a run id names a run only with the namespace and
    workflow id it belongs to), or the id's newest run."""
    params = {"namespace": namespace, "workflow_id": workflow_id, "run_id": run_id}
    row = await (await conn.execute(q("latest_run_by_workflow_id" if run_id is None else "get_run"),
                                    params)).fetchone()
    if row is None:
        return None
    return Run(str(row[0]), *row[1:])


async def successor(conn: Conn, run_id: str) -> str | None:
    """The run that ``run_id`` continued as (created in the same transaction)."""
    row = await (await conn.execute(q("run_successor"), {"run_id": run_id})).fetchone()
    return None if row is None else str(row[0])


async def outcome(conn: Conn, namespace: str, workflow_id: str, run_id: str) -> dict[str, Any] | None:
    """The run's status and, once closed, its last event (``run_outcome``: status,
    workflow_type, last_type, last_data), in one query; the same keys as the outcome a
    ``cairn_closed`` NOTIFY carries."""
    cur = conn.cursor(row_factory=dict_row)
    before = stored.marked()
    row = await (await cur.execute(q("run_outcome"), {
        "run_id": run_id, "namespace": namespace, "workflow_id": workflow_id})).fetchone()
    if row is not None and row.get("last_data") is not None:
        row["last_data"] = await stored.resolve_if(conn, before, row["last_data"])
    return row


async def in_chain(conn: Conn, namespace: str, workflow_id: str, run_id: str, first: str) -> bool:
    """Whether ``run_id`` is run ``first`` or comes from it (continue-as-new, reset, retry)."""
    row = await (await conn.execute(q("run_in_chain"), {
        "run_id": run_id, "first": first, "namespace": namespace, "workflow_id": workflow_id})).fetchone()
    return bool(row and row[0])


async def history_after(conn: Conn, run_id: str, after: int = 0) -> list[Event]:
    """The run's history events after seq ``after``, stored payloads resolved."""
    before = stored.marked()
    cur = await conn.execute(q("read_history_after"), {"run_id": run_id, "after": after})
    return await stored.resolve_events(conn, before, [Event(s, t, d, a) for s, t, d, a in await cur.fetchall()])


async def last_seq(conn: Conn, run_id: str) -> int | None:
    """The seq of the run's last history event (None: no history)."""
    row = await (await conn.execute(q("last_history_event"), {"run_id": run_id})).fetchone()
    return None if row is None else int(row[0])


LLM_COMPLETION = "cairn.llm.completion"  # the type of the chat activity's result (llm_completions)


def _is_completion(result: Any) -> bool:
    return isinstance(result, dict) and result.get("type") == LLM_COMPLETION


@dataclass(frozen=True, slots=True)
class Details:
    """What ``describe`` reads about a run besides its row, in one connection."""

    activities: list[dict[str, Any]]
    timers: list[dict[str, Any]]
    task: dict[str, Any] | None
    last_seq: int
    saga_events: list[Event]
    visibility: dict[str, Any]
    links: dict[str, Any]
    llm_completions: list[dict[str, Any]]
    unserved: list[Unserved]


async def details(conn: Conn, run_id: str, namespace: str) -> Details:
    """The run's pending activities, timers and workflow task, history length, saga events,
    visibility, lifecycle links, LLM completions and unserved types."""
    params = {"run_id": run_id}
    cur = conn.cursor(row_factory=dict_row)
    before = stored.marked()
    acts = await (await cur.execute(q("pending_activities"), params)).fetchall()
    timers = await (await cur.execute(q("pending_timers"), params)).fetchall()
    task = await (await cur.execute(q("pending_workflow_task"), params)).fetchone()
    last = await (await cur.execute(q("last_history_event"), params)).fetchone()
    saga = await (await conn.execute(q("saga_events"), params)).fetchall()
    vis = await (await cur.execute(q("run_visibility"), params)).fetchone() or {}
    links = await (await cur.execute(q("run_links"), params)).fetchone() or {}
    llm = await (await cur.execute(q("llm_completions"), params)).fetchall()
    unserved = await workers.unserved(conn, namespace, run_id=run_id)
    if stored.marked() != before:
        acts, llm, saga = await stored.resolve(conn, [acts, llm, [list(r) for r in saga]])
        llm = [r for r in llm if _is_completion((r["data"] or {}).get("result"))]
    return Details(acts, timers, task, last["seq"] if last else 0, [Event(s, t, d, a) for s, t, d, a in saga],
                   vis, links, llm, unserved)


async def list_runs(conn: Conn, params: dict[str, Any], flt: Filter | None) -> list[dict[str, Any]]:
    """Runs, newest first, as the listing shows them (``list_runs``/``list_runs_where``)."""
    cur = conn.cursor(row_factory=dict_row)
    if flt is None:
        await cur.execute(q("list_runs"), params)
    else:
        await cur.execute(sql.SQL(q("list_runs_where")).format(where=sql.SQL(flt.sql)), {**params, **flt.params})
    rows = await cur.fetchall()
    for r in rows:
        r["run_id"] = str(r["run_id"])
    return rows


async def count_runs(conn: Conn, params: dict[str, Any], flt: Filter | None) -> tuple[int, int]:
    """How many runs match in all, and how many of them come before ``params["before"]``."""
    query = sql.SQL(q("count_runs")).format(where=sql.SQL(flt.sql if flt else "true"))
    row = await (await conn.execute(query, {**params, **(flt.params if flt else {})})).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def status_counts(conn: Conn, namespace: str, workflow_type: str | None, flt: Filter | None) -> dict[str, int]:
    """Runs per status matching the type and filter (``ui_status_counts``)."""
    fragment = sql.SQL(flt.sql) if flt is not None else sql.SQL("true")
    params = {"namespace": namespace, "workflow_type": workflow_type, **(flt.params if flt else {})}
    cur = await conn.execute(sql.SQL(q("ui_status_counts")).format(where=fragment), params)
    return {str(s): int(n) for s, n in await cur.fetchall()}


async def db_now(conn: Conn) -> datetime:
    """The database's clock."""
    row = await (await conn.execute(q("db_now"))).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Progress:
    """The progress line of ``cairn start --wait`` (``run_progress``)."""

    status: str
    last_seq: int | None
    last_type: str | None
    activities_done: int


async def progress(conn: Conn, namespace: str, workflow_id: str) -> Progress | None:
    """The newest run's status, last event and completed activities."""
    row = await (await conn.execute(q("run_progress"), {"namespace": namespace, "workflow_id": workflow_id})
                 ).fetchone()
    return None if row is None else Progress(str(row[0]), row[1], row[2], int(row[3]))


# ---------------------------------------------------------------- following a run


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """One ``llm_stream`` row: streamed text of an attempt of an LLM activity."""

    id: int
    activity_seq: int
    attempt: int
    text: str


async def follow_step(conn: Conn, run_id: str, *, after_chunk: int, after_seq: int,
                      activity_seq: int | None) -> tuple[str | None, list[StreamBatch], list[Event]]:
    """The run's status (None: gone), its streamed batches after ``after_chunk`` and its
    events after ``after_seq``. The status first: if it is closed now, the events read
    after it are all there are."""
    status = await (await conn.execute(q("llm_follow_status"), {"run_id": run_id})).fetchone()
    cur = conn.cursor(row_factory=dict_row)
    chunks = await (await cur.execute(q("llm_stream_after"), {
        "run_id": run_id, "after": after_chunk, "seq": activity_seq})).fetchall()
    events = await history_after(conn, run_id, after_seq)
    return (None if status is None else str(status[0]),
            [StreamBatch(c["id"], c["activity_seq"], c["attempt"], c["text"]) for c in chunks], events)
