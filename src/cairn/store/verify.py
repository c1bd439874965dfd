"""The invariant checker's reads (:mod:`cairn.verify`): one statement per check over every
run, the pages of histories it replays, the effects sink and the canary scan.

Rows are NamedTuples (the checker unpacks them in column order); :func:`session`
translates any psycopg error into a :class:`~cairn.errors.DatabaseError`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg import sql

from cairn.errors import DatabaseError
from cairn.store import payloads
from cairn.store.db import connect_async, redact
from cairn.store.sql import q

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Row = tuple[Any, ...]
R = TypeVar("R", bound=tuple[Any, ...])
_REF = re.compile(r"^[A-Za-z0-9_-]{43}$")  # a SHA-256 in unpadded base64url: a reference's hash


class OpenRun(NamedTuple):
    run_id: str
    workflow_id: str | None
    workflow_type: str
    created_at: datetime


class ExpiredLease(NamedTuple):
    run_id: str
    workflow_id: str | None
    seq: int
    activity_type: str
    owner: str
    expires_at: datetime


class LingeringTasks(NamedTuple):
    table: str
    run_id: str
    workflow_id: str | None
    status: str
    rows: int


class RunOfId(NamedTuple):
    workflow_id: str
    namespace: str
    run_id: str
    first: bool


class HistoryGap(NamedTuple):
    run_id: str
    workflow_id: str | None
    seq: int
    previous: int | None


class HistoryStart(NamedTuple):
    run_id: str
    workflow_id: str | None
    first_type: str | None


class HistoryOrphans(NamedTuple):
    run_id: str
    events: int


class AfterTerminal(NamedTuple):
    run_id: str
    workflow_id: str | None
    seq: int
    type: str
    terminal_seq: int


class StatusMismatch(NamedTuple):
    run_id: str
    workflow_id: str | None
    status: str
    last_type: str | None
    expected: str | None


class DoubleOutcome(NamedTuple):
    run_id: str
    workflow_id: str | None
    seq: int
    event_types: list[str]


class UnmatchedEvent(NamedTuple):
    run_id: str
    workflow_id: str | None
    seq: int
    type: str
    referenced: str | None  # the seq the event names (as text: it may not be a number)
    command: str


class UnlinkedReferences(NamedTuple):
    run_id: str
    workflow_id: str | None
    place: str  # the row: "history seq 4", "inbox id 17", "updates <update id>", ...
    refs: list[str]  # its references that the run has no link to


class LinksWithoutRun(NamedTuple):
    run_id: str
    links: int


class RunToReplay(NamedTuple):
    run_id: str
    workflow_id: str
    workflow_type: str
    queue: str
    namespace: str
    status: str


class SagaRun(NamedTuple):
    run_id: str
    workflow_id: str
    status: str


class HistoryRow(NamedTuple):
    run_id: str
    seq: int
    type: str
    data: dict[str, Any] | None
    at: datetime | None


class MissingEffect(NamedTuple):
    run_id: str
    workflow_id: str | None
    seq: int
    activity_type: str


class DuplicatedEffect(NamedTuple):
    run_id: str
    workflow_id: str | None
    seq: int
    effects: int
    attempts: list[int]


class CairnTable(NamedTuple):
    table: str
    columns: list[str]
    primary_key: list[str]


def _as(kind: type[R], rows: list[Row]) -> list[R]:
    return [kind(*r) for r in rows]


@contextlib.asynccontextmanager
async def session(url: str) -> AsyncIterator[Conn]:
    """A connection for one check (a URL libpq cannot parse is bad input, password masked);
    any database error inside the block becomes a :class:`DatabaseError`."""
    conn: Conn = await connect_async(url)
    try:
        yield conn
    except psycopg.Error as exc:
        raise DatabaseError(f"verify: database error: {type(exc).__name__}: "
                            f"{redact(str(exc).strip().splitlines()[0])}") from None
    finally:
        await conn.close()


async def _rows(conn: Conn, query: str | sql.Composed, params: dict[str, Any] | None = None) -> list[Row]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


def _table(name: Sequence[str]) -> sql.Identifier:
    return sql.Identifier(*name)


async def table_exists(conn: Conn, name: str) -> bool:
    return bool((await _rows(conn, q("verify_table_exists"), {"name": name}))[0][0])


async def run_counts(conn: Conn) -> dict[str, int]:
    """Runs per status."""
    return {s: int(n) for s, n in await _rows(conn, q("verify_run_counts"))}


async def open_runs(conn: Conn) -> list[OpenRun]:
    """(run_id, workflow_id, workflow_type, created_at) of the open runs."""
    return _as(OpenRun, await _rows(conn, q("verify_open_runs")))


async def expired_leases(conn: Conn) -> list[ExpiredLease]:
    """(run_id, workflow_id, seq, activity_type, owner, expires_at) of the expired leases."""
    return _as(ExpiredLease, await _rows(conn, q("verify_expired_leases")))


async def lingering_tasks(conn: Conn) -> list[LingeringTasks]:
    """(table, run_id, workflow_id, status, rows) of queue rows of closed or missing runs."""
    return _as(LingeringTasks, await _rows(conn, q("verify_lingering_tasks")))


async def runs_of_workflow_ids(conn: Conn, keys: Sequence[tuple[str, str]]) -> list[RunOfId]:
    """(workflow_id, namespace, run_id, first) of the runs of these (namespace, workflow id)s."""
    return _as(RunOfId, await _rows(conn, q("verify_runs_of_workflow_ids"), {
        "workflow_ids": [k[1] for k in keys], "namespaces": [k[0] for k in keys]}))


async def runs_exist(conn: Conn, run_ids: list[str]) -> set[str]:
    """Which of these runs exist."""
    return {r for (r,) in await _rows(conn, q("verify_runs_exist"), {"run_ids": run_ids})}


async def history_gaps(conn: Conn) -> list[HistoryGap]:
    """(run_id, workflow_id, seq, previous seq) where a history skips or repeats a seq."""
    return _as(HistoryGap, await _rows(conn, q("verify_history_gaps")))


async def history_start(conn: Conn) -> list[HistoryStart]:
    """(run_id, workflow_id, first event type) of histories not starting with WorkflowStarted."""
    return _as(HistoryStart, await _rows(conn, q("verify_history_start")))


async def history_orphans(conn: Conn) -> list[HistoryOrphans]:
    """(run_id, events) of history rows with no run."""
    return _as(HistoryOrphans, await _rows(conn, q("verify_history_orphans")))


async def after_terminal(conn: Conn, terminal: list[str]) -> list[AfterTerminal]:
    """(run_id, workflow_id, seq, type, terminal type) of events after a terminal event."""
    return _as(AfterTerminal, await _rows(conn, q("verify_after_terminal"), {"terminal": terminal}))


async def status_vs_terminal(conn: Conn, terminal: list[str], statuses: list[str]) -> list[StatusMismatch]:
    """(run_id, workflow_id, status, last type, expected status) where they disagree."""
    params = {"terminal": terminal, "statuses": statuses}
    return _as(StatusMismatch, await _rows(conn, q("verify_status_vs_terminal"), params))


async def double_outcomes(conn: Conn) -> list[DoubleOutcome]:
    """(run_id, workflow_id, seq, event types) of commands with more than one outcome."""
    return _as(DoubleOutcome, await _rows(conn, q("verify_double_outcomes")))


async def double_local_outcomes(conn: Conn) -> list[DoubleOutcome]:
    """(run_id, workflow_id, local seq, events) of local activities with more than one final marker."""
    return _as(DoubleOutcome, await _rows(conn, q("verify_double_local_outcomes")))


async def unmatched_events(conn: Conn, params: dict[str, Any]) -> list[UnmatchedEvent]:
    """(run_id, workflow_id, seq, type, referenced seq, command) of outcomes with no command."""
    return _as(UnmatchedEvent, await _rows(conn, q("verify_unmatched_events"), params))


async def unlinked_references(conn: Conn) -> list[UnlinkedReferences]:
    """(run_id, workflow_id, place, references) of the rows whose stored payload references
    their run has no link to (in run order, then history first)."""
    return _as(UnlinkedReferences, await _rows(conn, q("verify_payload_references")))


async def stored_refs(conn: Conn, refs: Iterable[str]) -> set[str]:
    """Which of these references name a stored payload (a malformed one names none)."""
    wellformed = {r for r in refs if _REF.match(r)}
    rows = await _rows(conn, q("verify_payloads_stored"), {"hashes": payloads.digests(wellformed)})
    return {payloads.ref_of_digest(bytes(h)) for (h,) in rows}


async def links_without_run(conn: Conn) -> list[LinksWithoutRun]:
    """(run_id, links) of payload links whose run does not exist."""
    return _as(LinksWithoutRun, await _rows(conn, q("verify_payload_links")))


async def payload_counts(conn: Conn) -> tuple[int, int, int]:
    """(payloads, links, payloads no run links) of the payload store."""
    payloads, links, unlinked = (await _rows(conn, q("verify_payload_stats")))[0]
    return int(payloads), int(links), int(unlinked)


async def skipped_types(conn: Conn, types: list[str]) -> dict[str, int]:
    """Runs per workflow type that the checker has no code for."""
    return {t: int(n) for t, n in await _rows(conn, q("verify_skipped_types"), {"types": types})}


async def runs_page(conn: Conn, types: list[str], after: Any, limit: int) -> list[RunToReplay]:
    """A page of the runs to replay (run_id first), after run ``after``."""
    return _as(RunToReplay, await _rows(conn, q("verify_runs_page"), {"types": types, "after": after, "limit": limit}))


async def saga_runs_page(conn: Conn, after: Any, limit: int) -> list[SagaRun]:
    """A page of the runs with saga markers (run_id first), after run ``after``."""
    return _as(SagaRun, await _rows(conn, q("verify_saga_runs_page"), {"after": after, "limit": limit}))


async def histories(conn: Conn, run_ids: list[Any]) -> list[HistoryRow]:
    """(run_id, seq, type, data, at) of these runs' histories."""
    return _as(HistoryRow, await _rows(conn, q("verify_histories"), {"run_ids": run_ids}))


async def reexecutions(conn: Conn) -> int:
    """Activities that ran a second attempt."""
    return int((await _rows(conn, q("verify_reexecutions")))[0][0])


def _fill(name: str, effects: Sequence[str], attempts: Sequence[str] | None) -> sql.Composed:
    return sql.SQL(q(name)).format(effects=_table(effects), attempts=_table(attempts or effects))


async def effects_stats(conn: Conn, effects: Sequence[str]) -> Row:
    """(rows, kinds, re-executed) of the effects sink (``effects``: [schema,] table)."""
    return (await _rows(conn, _fill("verify_effects_stats", effects, None)))[0]


async def effects_missing(conn: Conn, effects: Sequence[str], kinds: list[str]) -> list[MissingEffect]:
    """(run_id, workflow_id, seq, activity_type) of completed activities with no effect."""
    return _as(MissingEffect, await _rows(conn, _fill("verify_effects_missing", effects, None), {"kinds": kinds}))


async def effects_duplicated(conn: Conn, effects: Sequence[str]) -> list[DuplicatedEffect]:
    """(run_id, workflow_id, seq, effects, attempts) of activities with several effects."""
    return _as(DuplicatedEffect, await _rows(conn, _fill("verify_effects_duplicated", effects, None)))


async def attempts_stats(conn: Conn, effects: Sequence[str], attempts: Sequence[str]) -> Row:
    """(rows, re-executed) of the sink's attempt log."""
    return (await _rows(conn, _fill("verify_attempts_stats", effects, attempts)))[0]


async def cairn_columns(conn: Conn) -> list[CairnTable]:
    """(table, columns, primary key columns) of every cairn.* table."""
    return _as(CairnTable, await _rows(conn, q("verify_cairn_columns")))


async def canary_hits(conn: Conn, table: str, columns: list[str], pkey: list[str], forms: list[str]) -> list[Row]:
    """The rows of cairn.``table`` where a column holds one of ``forms`` (a secret as
    written, and as it reads inside JSON): the row's key (``pkey``, else its ctid) and, per
    column, whether it does."""
    # Identifiers come from the catalogue, so this statement is built here rather than
    # kept in queries.sql; the secrets are literals in it, never logged.
    key: list[sql.Composable] = [sql.SQL("{}::text").format(sql.Identifier(c)) for c in pkey]
    key = key or [sql.SQL("ctid::text")]
    hits = [sql.SQL(" OR ").join(sql.SQL("strpos({}::text, {}) > 0").format(sql.Identifier(c), sql.Literal(f))
                                 for f in forms) for c in columns]
    statement = sql.SQL("SELECT {key}, {flags} FROM {table} WHERE {any}").format(
        key=sql.SQL(", ").join(key),
        flags=sql.SQL(", ").join(sql.SQL("({})").format(hit) for hit in hits),
        table=sql.Identifier("cairn", table),
        any=sql.SQL(" OR ").join(sql.SQL("({})").format(hit) for hit in hits),
    )
    return await _rows(conn, statement)
