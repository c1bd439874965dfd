"""The client: start workflows, wait for results, inspect and steer runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cairn.client.messages import ClientMessages, HandleMessages
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.errors import (
    DatabaseUnavailable,
    InputValidationError,
    OutcomeUnknown,
    WorkflowAlreadyStarted,
    WorkflowCancelled,
    WorkflowClosed,
    WorkflowFailure,
    WorkflowIdReuseRefused,
    WorkflowNotFound,
    WorkflowTerminated,
    WorkflowTimedOutError,
    WorkflowTimeout,
)
from cairn.options import (
    ID_REUSE_POLICIES,
    RUN_STATUSES,
    IdReusePolicy,
    check_execution_timeout,
    check_identifier,
    check_namespace,
    check_policy,
    check_queue,
    new_run_id,
    seconds,
    shown,
)
from cairn.payloads import Signature, check_memo, to_payload
from cairn.store import db, durability
from cairn.store import lifecycle as _lifecycle
from cairn.store.db import CLIENT_CONNECTION_OPTIONS
from cairn.store.filters import Filter, parse_filter
from cairn.store.sql import q
from cairn.telemetry import tracer
from cairn.views import describe_sagas, llm_calls, llm_totals
from cairn.visibility import check_search_attributes
from cairn.workflow import definition_of

if TYPE_CHECKING:
    from cairn.client.follow import StreamChunk

log = logging.getLogger("cairn.client")

IdConflictPolicy = Literal["fail", "use_existing"]
DEFAULT_QUEUE = "default"  # where a start goes when no queue is given and no worker registered its type
# A start of an @workflow.defn function without a queue asks the registry which queue serves
# its type; a client remembers an answer naming one queue for this long (a round trip
# saved per start: the registry changes when workers of a new queue start).
QUEUE_CACHE_SECONDS = 10.0
MAX_LIST_LIMIT = 100_000  # runs one list call returns at most (the CLI's --limit too)
WATCHED_RUNS = 10_000  # runs started here whose close the listener tracks (see Client._known_open)
# A watched run keeps the outcome its close NOTIFY carried until result() takes it, up to
# this size (10,000 watched runs: ~10 MB at most); a larger one is read when asked for.
WATCHED_OUTCOME_BYTES = 1024
# A read that loses its connection (a restart, a failover, a terminated session) runs again
# on a fresh one, backing off from the first delay to the longest, for up to
# READ_RETRY_SECONDS; result() keeps trying for as long as it was asked to wait.
READ_RETRY_SECONDS = 30.0
RETRY_FIRST_DELAY_SECONDS = 0.1
RETRY_MAX_DELAY_SECONDS = 2.0

T = TypeVar("T")
Read = Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]


@dataclass(frozen=True)
class StartTarget:
    """Where a start of a workflow type goes (:meth:`Client.start_target`)."""

    name: str
    queue: str
    input_schema: dict[str, Any] | None  # registered there; None: no worker has registered the type there yet
    inferred: bool  # no queue was given: the one queue the type is registered on, or the default
    elsewhere: tuple[str, ...] = ()  # the queues the type is registered on, if not this one
    known: tuple[str, ...] = ()  # the registered workflow types, if this one is registered nowhere

    @property
    def warning(self) -> str | None:
        """The one-line warning of a start that no registered worker will run yet."""
        if self.input_schema is not None:
            return None
        hint = f" (registered on: {', '.join(self.elsewhere)})" if self.elsewhere else \
            f" (registered types: {', '.join(self.known)})" if self.known else ""
        return (f"no worker has registered workflow type {self.name!r} on queue {self.queue!r} yet; "
                f"the run waits for one{hint}")


@dataclass
class RunDescription:
    """What ``describe`` shows about a run."""

    workflow_id: str
    run_id: str
    workflow_type: str
    queue: str
    status: str
    created_at: datetime
    closed_at: datetime | None
    failure: dict[str, Any] | None
    history_length: int
    pending_activities: list[dict[str, Any]] = field(default_factory=list)
    pending_timers: list[dict[str, Any]] = field(default_factory=list)
    workflow_task: dict[str, Any] | None = None
    sagas: list[dict[str, Any]] = field(default_factory=list)
    search_attributes: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] | None = None
    reset_from: dict[str, Any] | None = None  # the run a reset or retry started from
    # The run lifecycle: parent link, continue-as-new chain, execution deadline, children.
    parent: dict[str, Any] | None = None
    continued_from: str | None = None
    continued_to: str | None = None
    execution_deadline: datetime | None = None
    children: list[dict[str, Any]] = field(default_factory=list)
    # LLM calls (cairn.llm.chat): per call model, tokens, cost, ttft; and their totals.
    llm_calls: list[dict[str, Any]] = field(default_factory=list)
    llm_totals: dict[str, Any] | None = None
    # Pending work of a type no worker has registered on its queue: it waits for one.
    # Each {"kind": "workflow"|"activity", "type", "queue", "message"}.
    unserved: list[dict[str, str]] = field(default_factory=list)

    @property
    def saga(self) -> dict[str, Any] | None:
        """The run's latest saga (see :func:`cairn.views.describe_sagas`), if it has one."""
        return self.sagas[-1] if self.sagas else None

    def to_json(self) -> dict[str, Any]:
        return to_payload(self.__dict__)  # type: ignore[no-any-return]


def _validate_id(workflow_id: str) -> str:
    return check_identifier(workflow_id, "the workflow id")


def _validate_run_id(run_id: str) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        raise InputValidationError(f"{run_id!r} is not a run id (run ids are UUIDs)") from None


def check_input(name: str, input_schema: dict[str, Any], payload: list[Any]) -> None:
    """Validates a start's arguments against a registered input schema (every error, not
    only the first)."""
    import jsonschema

    validator = jsonschema.validators.validator_for(input_schema)(input_schema)
    problems = []
    for exc in sorted(validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in exc.absolute_path)
        problems.append(f"{'at ' + where + ': ' if where else ''}{exc.message}")
    if problems:
        raise InputValidationError(f"input for workflow {name!r} is invalid: {'; '.join(problems)}")


def _validate_queue(queue: str) -> str:
    return check_queue(queue)


def _lookup_id(workflow_id: str) -> str:
    """A workflow id to look up (see ``check_identifier``'s ``lookup``)."""
    return check_identifier(workflow_id, "the workflow id", lookup=True)


def _lookup_type(name: str) -> str:
    """A workflow type name to look up."""
    return check_identifier(name, "the workflow type", lookup=True)


@dataclass
class RunPage:
    """One page of a listing (:meth:`Client.list_page`).

    Attributes:
        runs: the page's runs, newest first.
        total: how many runs match the filters in all.
        skipped: how many of them came on the pages before this one.
        next_page_token: pass it as ``page_token`` for the next page; None on the last.
    """

    runs: list[dict[str, Any]]
    total: int
    skipped: int
    next_page_token: str | None

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "total": self.total, "next_page_token": self.next_page_token}


class Client(ClientMessages):
    """A connection to Cairn's database: start workflows and inspect runs.

    Signals, signal-with-start and queries come from :class:`cairn.client.messages.ClientMessages`.

    Use :meth:`connect`; close with :meth:`close` or ``async with``.
    """

    def __init__(self, pool: AsyncConnectionPool, url: str, namespace: str = "default") -> None:
        self.pool = pool
        self.url = url
        self.namespace = check_namespace(namespace)
        self._listener: asyncio.Task[None] | None = None
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self._listening = asyncio.Event()
        # Runs started by this client while its listener was connected: run id -> [the
        # listener connection's epoch at the start, a close seen, the outcome it carried].
        # See _known_open.
        self._listen_epoch = 0
        self._watched: OrderedDict[str, list[Any]] = OrderedDict()
        self._queues: dict[str, tuple[float, str]] = {}  # workflow type -> (when, its one queue): _cached_queue

    @classmethod
    async def connect(cls, url: str | None = None, *, namespace: str = "default",
                      max_size: int = 10, check_schema: bool = True) -> Client:
        """Connects to ``url`` (default: ``CAIRN_DATABASE_URL``, else the embedded server).

        With the embedded server the schema is migrated on first use.
        """
        check_namespace(namespace)  # before connecting
        resolved, embedded = await asyncio.to_thread(db.resolve_url, url)
        db.remember_secret(resolved)
        if embedded or check_schema:
            await asyncio.to_thread(_prepare, resolved, embedded)
        pool = db.Pool(
            resolved, min_size=1, max_size=max_size, open=False,
            kwargs={"autocommit": True, "options": CLIENT_CONNECTION_OPTIONS},
        )
        try:
            await pool.open(wait=True, timeout=30)
        except Exception as exc:
            await pool.close()
            raise DatabaseUnavailable(f"cannot connect to {db.redact(resolved)}: {db.redact(str(exc))}") from None
        return cls(pool, resolved, namespace)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self.pool.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- starting

    async def start(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        id: str | None = None,
        queue: str | None = None,
        id_conflict: IdConflictPolicy = "fail",
        conn: psycopg.AsyncConnection[Any] | None = None,
        search_attributes: Mapping[str, Any] | None = None,
        memo: Mapping[str, Any] | None = None,
        id_reuse_policy: IdReusePolicy = "allow_duplicate",
        execution_timeout: timedelta | float | None = None,
    ) -> WorkflowHandle:
        """Starts a workflow run and returns once the start is committed.

        Args:
            workflow: an ``@workflow.defn`` function, or a registered workflow type name.
            args: the workflow's arguments, validated against its annotations first.
            id: the workflow id (default: a new UUID). At most one run per id is open.
            queue: the workflow queue the run's tasks go to. Default: the one queue whose
                workers registered the workflow type; the ``"default"`` queue if none did yet
                (the run waits for a worker, with a logged warning). A type registered on
                several queues needs a queue.
            id_conflict: with an open run of the same id, ``"fail"`` raises
                :class:`WorkflowAlreadyStarted`; ``"use_existing"`` returns its handle.
            conn: the caller's own connection, inside its transaction: the start commits
                or rolls back with the caller's writes (transactional outbox).
            search_attributes: typed key/values to filter runs by (``cairn list --where``):
                str, int, float, bool, timezone-aware datetime, or a list of str.
            memo: a JSON object shown by ``describe`` (not searchable).
            id_reuse_policy: about the id's *closed* runs: ``"allow_duplicate"`` (default)
                starts anyway; ``"allow_duplicate_failed_only"`` only if the newest closed run
                failed, was cancelled, terminated or timed out; ``"reject_duplicate"`` never
                reuses an id. A refusal raises :class:`WorkflowIdReuseRefused`.
            execution_timeout: the most the run, and the runs it continues as, may take in
                all; past it the run closes as ``timed_out`` (seconds or a ``timedelta``).

        Raises:
            InputValidationError: bad arguments, id, queue, policy or timeout, or no queue given
                for a type registered on several; nothing was written.
            WorkflowAlreadyStarted: the id has an open run (``id_conflict="fail"``), or the id
                reuse policy refused (:class:`WorkflowIdReuseRefused`); nothing was written.
            DatabaseUnavailable: the database was out of reach (a lost connection is retried
                for 30 s); :class:`OutcomeUnknown` if the start may have committed.
        """
        # The span is current while the parameters are built: start_params stores its
        # context in WorkflowStarted, the root of the run's trace.
        with tracer.start_as_current_span("cairn.start_workflow") as span:
            params, signature = await self._start_params(workflow, args, id, queue, id_conflict,
                                                         id_reuse_policy=id_reuse_policy,
                                                         execution_timeout=execution_timeout)
            add_visibility(params, search_attributes, memo)
            span.set_attributes({"cairn.workflow_id": params["workflow_id"],
                                 "cairn.workflow_type": params["workflow_type"]})
            if conn is not None:
                try:
                    run_id = await self._start_on(conn, params, id_conflict)
                except psycopg.Error as exc:  # the caller's transaction: theirs to retry
                    raise db.translate(exc) from None
            else:
                self._watch(params["run_id"])  # before the start commits: no close can be missed
                run_id = ""
                try:
                    run_id = await self._start_idempotently(params, id_conflict)
                finally:
                    if run_id != params["run_id"]:  # not started, or the handle of an existing run
                        self._watched.pop(params["run_id"], None)
            span.set_attribute("cairn.run_id", run_id)
        return WorkflowHandle(self, params["workflow_id"], run_id, signature)

    async def _start_params(self, workflow: Callable[..., Any] | str, args: tuple[Any, ...], id: str | None,
                            queue: str | None, id_conflict: str, *, id_reuse_policy: str = "allow_duplicate",
                            execution_timeout: timedelta | float | None = None,
                            ) -> tuple[dict[str, Any], Signature | None]:
        """Validates a start (before anything is written) and builds its parameters."""
        if id_conflict not in ("fail", "use_existing"):
            raise InputValidationError(f"id_conflict must be 'fail' or 'use_existing', not {id_conflict!r}")
        check_policy(id_reuse_policy, ID_REUSE_POLICIES, "id_reuse_policy")
        timeout = check_execution_timeout(seconds(execution_timeout))
        workflow_id = _validate_id(id) if id is not None else new_run_id()
        if queue is not None:
            _validate_queue(queue)
        payload = [to_payload(a) for a in args]
        signature: Signature | None = None
        if isinstance(workflow, str):
            name = workflow
            target = await self.start_target(name, queue)
            if target.input_schema is not None:
                check_input(name, target.input_schema, payload)
            else:
                log.warning("%s", target.warning)
            queue = target.queue
        else:
            d = definition_of(workflow)
            name, signature = d.name, d.signature
            signature.validate_args(payload, f"workflow {name}")
            if queue is None:
                queue = await self._cached_queue(name)
        params = _lifecycle.start_params(
            namespace=self.namespace, workflow_id=workflow_id, workflow_type=name, queue=queue, args=payload,
            id_reuse_policy=id_reuse_policy, execution_timeout=timeout,
        )
        return params, signature

    async def _start_idempotently(self, params: dict[str, Any], policy: IdConflictPolicy) -> str:
        """Starts the run on a pooled connection (autocommit: start_workflow is one atomic
        statement, committed when it returns). A start whose connection is lost may have
        committed: it is tried again on a fresh connection, which is safe because the run id
        is chosen here: the run found under it is this start's (see started_run_id)."""
        tries = 0

        async def attempt(c: psycopg.AsyncConnection[Any]) -> str:
            nonlocal tries
            tries += 1
            if tries > 1 and await (await c.execute(q("get_run"), params)).fetchone():
                return str(params["run_id"])  # the lost attempt had committed
            return await self._start_on(c, params, policy)

        try:
            return await self._read(attempt)
        except DatabaseUnavailable as exc:
            if not tries:
                raise  # no connection was had: nothing was sent
            raise OutcomeUnknown(
                f"the connection to the database was lost while starting workflow {params['workflow_id']!r} "
                f"(run {params['run_id']}), and it stayed out of reach ({exc}): look for that run with "
                f"`cairn describe {params['workflow_id']}` before starting it again") from None

    async def _start_on(self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any],
                        policy: IdConflictPolicy) -> str:
        reads_closed = params.get("id_reuse_policy") != "allow_duplicate"
        while True:
            async with conn.transaction() if reads_closed else contextlib.nullcontext():
                if reads_closed:
                    await conn.execute(q("lock_open_run"), params)  # see queries.sql
                row = await (await conn.execute(q("start_workflow"), params)).fetchone()
                existing = None if row else \
                    await (await conn.execute(q("open_run_by_workflow_id"), params)).fetchone()
            run_id = started_run_id(row, existing, params, policy)
            if run_id is not None:
                return run_id

    async def _read(self, read: Read[T], *, wait: float | None = READ_RETRY_SECONDS) -> T:
        """Runs ``read`` on a pooled connection, again on a fresh one after a lost connection
        or a read-only session (see :meth:`_retrying`), for up to ``wait`` seconds (None: for
        as long as it takes). Only for what is safe to repeat: reads, and writes idempotent
        by construction.

        Raises:
            DatabaseUnavailable: the database stayed out of reach for ``wait`` seconds.
            DatabaseError: another database error (translated, never a psycopg one).
        """
        return await self._retrying(read, wait=wait)

    async def _write(self, write: Read[T], *, what: str, check: str) -> T:
        """Runs ``write``, which must not be repeated blindly, on a pooled connection. Only a
        write that surely did nothing runs again: no connection could be had, or a read-only
        session refused it (a failover's; the pool replaces the session).

        Raises:
            OutcomeUnknown: the connection was lost with the write on its way (``what`` it
                was; ``check`` says how to find out whether it took effect).
            DatabaseError: the database stayed out of reach (``DatabaseUnavailable``) or
                read-only for 30 s, or another database error.
        """
        return await self._retrying(write, wait=READ_RETRY_SECONDS,
                                    lost=lambda exc: db.translate_write(exc, what=what, check=check))

    async def _retrying(self, op: Read[T], *, wait: float | None,
                        lost: Callable[[psycopg.Error], Exception] | None = None) -> T:
        """Runs ``op`` on a pooled connection until it succeeds, backing off from the first
        delay to the longest, for up to ``wait`` seconds. It runs again after a lost connection
        (unless ``lost`` says what to raise instead once ``op`` may have been sent) and after
        a refusal by a read-only session, which did nothing."""
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        delay = RETRY_FIRST_DELAY_SECONDS
        while True:
            sent = False
            try:
                async with self.pool.connection() as c:
                    sent = True
                    return await op(c)
            except psycopg.Error as exc:
                if sent and lost is not None and db.connection_lost(exc):
                    raise lost(exc) from None
                again = db.connection_lost(exc) or db.read_only_refusal(exc)
                if not again or (deadline is not None and loop.time() + delay > deadline):
                    raise db.translate(exc) from None
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_DELAY_SECONDS)

    async def start_target(self, name: str, queue: str | None = None) -> StartTarget:
        """Where a start of workflow type ``name`` goes, from the registry that workers fill
        (one input schema per queue): ``queue`` if given, else the one queue whose workers
        registered the type, else the default queue. ``input_schema`` is None when no worker
        has registered the type on that queue yet (the run would wait for one).

        Raises:
            InputValidationError: no queue given, and the type is registered on several.
        """
        _lookup_type(name)
        if queue is not None:
            _validate_queue(queue)

        async def read(c: psycopg.AsyncConnection[Any]) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
            cur = c.cursor(row_factory=dict_row)
            rows = await (await cur.execute(q("get_workflow_type"),
                                            {"namespace": self.namespace, "name": name})).fetchall()
            known: tuple[str, ...] = ()
            if not rows:  # a typo? the warning lists the known types
                known = tuple(r["name"] for r in await (await cur.execute(
                    q("list_workflow_types"), {"namespace": self.namespace})).fetchall())
            return rows, known

        rows, known = await self._read(read)
        queues = tuple(r["queue"] for r in rows)
        if queue is None and len(rows) > 1:
            raise InputValidationError(f"workflow type {name!r} is registered on several queues "
                                       f"({', '.join(queues)}): choose one (--queue, or queue=)")
        if queue is None:
            queue = queues[0] if rows else DEFAULT_QUEUE
            inferred = True
        else:
            inferred = False
        row = next((r for r in rows if r["queue"] == queue), None)
        if row is None:
            return StartTarget(name, queue, None, inferred, queues, known)
        return StartTarget(name, queue, row["input_schema"], inferred)

    async def _cached_queue(self, name: str) -> str:
        """The queue of a start of an ``@workflow.defn`` function given none (see
        :meth:`start_target`); an answer naming a registered queue is remembered for
        QUEUE_CACHE_SECONDS."""
        cached = self._queues.get(name)
        if cached is not None and time.monotonic() - cached[0] < QUEUE_CACHE_SECONDS:
            return cached[1]
        target = await self.start_target(name)
        if target.warning is not None:
            log.warning("%s", target.warning)
        else:
            self._queues[name] = (time.monotonic(), target.queue)
        return target.queue

    # -- reading

    def get_handle(self, workflow_id: str, run_id: str | None = None) -> WorkflowHandle:
        """A handle on an existing workflow: each call acts on its newest run (following
        continue-as-new), or on run ``run_id`` alone if given (see :class:`WorkflowHandle`)."""
        _lookup_id(workflow_id)
        if run_id is not None:
            run_id = _validate_run_id(run_id)
        return WorkflowHandle(self, workflow_id, run_id, None, pinned=run_id is not None)

    async def _run_row(self, workflow_id: str, run_id: str | None, *,
                       wait: float | None = READ_RETRY_SECONDS) -> dict[str, Any]:
        _lookup_id(workflow_id)  # reset and retry look up here without a handle
        # A run id names a run only with the namespace and workflow id it belongs to.
        params = {"namespace": self.namespace, "workflow_id": workflow_id, "run_id": run_id}

        async def read(c: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            cur = c.cursor(row_factory=dict_row)
            await cur.execute(q("latest_run_by_workflow_id" if run_id is None else "get_run"), params)
            return await cur.fetchone()

        row = await self._read(read, wait=wait)
        if row is None:
            which = f"run {run_id} for id" if run_id else "run with id"
            raise WorkflowNotFound(f"no workflow {which} {shown(workflow_id)}")
        row["run_id"] = str(row["run_id"])
        return row

    async def _list_rows(self, status: str | None, workflow_type: str | None, limit: int, flt: Filter | None,
                         page_token: str | None) -> list[dict[str, Any]]:
        """Up to ``limit`` + 1 rows: the extra one says whether another page follows."""
        statuses = RUN_STATUSES
        if status is not None and status not in statuses:
            raise InputValidationError(f"status must be one of {', '.join(statuses)}; got {status!r}")
        if workflow_type is not None:
            _lookup_type(workflow_type)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise InputValidationError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}, "
                                       f"not {shown(str(limit))}")
        if page_token is not None:
            try:
                uuid.UUID(page_token)
            except ValueError:
                raise InputValidationError(
                    f"page token {page_token!r} is not one a listing gave (its next_page_token)") from None
        params = {"namespace": self.namespace, "status": status, "workflow_type": workflow_type,
                  "limit": limit + 1, "before": page_token}

        async def read(c: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
            cur = c.cursor(row_factory=dict_row)
            if flt is None:
                await cur.execute(q("list_runs"), params)
            else:
                query = sql.SQL(q("list_runs_where")).format(where=sql.SQL(flt.sql))
                await cur.execute(query, {**params, **flt.params})
            return await cur.fetchall()

        rows = await self._read(read)
        for r in rows:
            r["run_id"] = str(r["run_id"])
        return rows

    async def list(self, *, status: str | None = None, workflow_type: str | None = None,
                   limit: int = 50, where: str | None = None, page_token: str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first, optionally filtered by status and workflow type.

        ``where`` is a filter such as ``customer = "acme" AND amount > 10`` (see
        :mod:`cairn.visibility`). Rows carry search attributes and memo. ``page_token``
        (``list_page().next_page_token``) lists only the runs after that page.

        Raises:
            InputValidationError: a bad status, limit, filter (the message names the column)
                or page token.
        """
        flt = parse_filter(where) if where is not None else None
        return (await self._list_rows(status, workflow_type, limit, flt, page_token))[:limit]

    async def list_page(self, *, status: str | None = None, workflow_type: str | None = None,
                        limit: int = 50, where: str | None = None, page_token: str | None = None) -> RunPage:
        """One page of :meth:`list`, with how many runs match in all and the next page's token."""
        flt = parse_filter(where) if where is not None else None
        rows = await self._list_rows(status, workflow_type, limit, flt, page_token)
        params = {"namespace": self.namespace, "status": status, "workflow_type": workflow_type,
                  "before": page_token, **(flt.params if flt else {})}
        async def count(c: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            cur = c.cursor(row_factory=dict_row)
            query = sql.SQL(q("count_runs")).format(where=sql.SQL(flt.sql if flt else "true"))
            return await (await cur.execute(query, params)).fetchone()

        counts = await self._read(count)
        assert counts is not None
        more = len(rows) > limit
        return RunPage(runs=rows[:limit], total=int(counts["total"]), skipped=int(counts["before"]),
                       next_page_token=rows[limit - 1]["run_id"] if more else None)

    # -- operator actions (cairn.client.operators)

    async def reset(self, workflow_id: str, *, run_id: str | None = None, to_seq: int | None = None,
                    to_last_task: bool = False, reason: str = "", reapply_signals: bool = True) -> WorkflowHandle:
        """Starts a new run from the old run's history before the workflow task at ``to_seq``.

        See :func:`cairn.client.operators.reset`; returns a handle on the new run.
        """
        from cairn.client import operators

        return await operators.reset(self, workflow_id, run_id=run_id, to_seq=to_seq, to_last_task=to_last_task,
                                     reason=reason, reapply_signals=reapply_signals)

    async def retry(self, workflow_id: str, *, run_id: str | None = None) -> WorkflowHandle:
        """Starts a failed (cancelled, terminated, timed-out) run again from its original input.

        See :func:`cairn.client.operators.retry`; returns a handle on the new run.
        """
        from cairn.client import operators

        return await operators.retry(self, workflow_id, run_id=run_id)

    # -- waiting for closes

    @contextlib.contextmanager
    def _close_waiter(self, run_id: str) -> Iterator[asyncio.Future[dict[str, Any] | None]]:
        """A future that the listener resolves when a NOTIFY says the run closed, with the
        outcome the NOTIFY carried (None: read it).

        Register it *before* checking the run's status, so a close between the check and
        the wait is not missed.
        """
        fut: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(fut)
        try:
            yield fut
        finally:
            waiters = self._waiters.get(run_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(run_id, None)

    def _watch(self, run_id: str) -> None:
        """Notes a run this client is starting, if its listener is connected: the listener
        then sees its close (``cairn_closed``) whenever ``result()`` is called."""
        if self._listener is None or self._listener.done() or not self._listening.is_set():
            return
        self._watched[run_id] = [self._listen_epoch, False, None]
        if len(self._watched) > WATCHED_RUNS:
            self._watched.popitem(last=False)  # forgotten: its result() reads the run first

    def _known_open(self, run_id: str) -> bool:
        """True if the run was started here while the listener was connected, that same
        connection is still the listener's, and no close NOTIFY has arrived: the run is open
        without asking the database. (Postgres delivers every notification committed after
        LISTEN to that session; a reconnect bumps the epoch and voids the knowledge.)"""
        entry = self._watched.get(run_id)
        return (entry is not None and not entry[1] and entry[0] == self._listen_epoch
                and self._listener is not None and not self._listener.done())

    def _seen_outcome(self, run_id: str) -> dict[str, Any] | None:
        """The outcome a close NOTIFY of a watched run carried, if one arrived."""
        entry = self._watched.get(run_id)
        return entry[2] if entry is not None and entry[1] else None

    async def _ensure_listener(self, wait: float | None = None) -> None:
        """Starts the listener and waits for it to connect, for up to 30 s (or ``wait``); a
        listener still away (the database down) is no error: waiters re-read periodically."""
        if self._listener is None or self._listener.done():
            self._listening.clear()
            self._listener = asyncio.create_task(self._listen())
        if not self._listening.is_set():  # the common case costs no wait at all
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30.0 if wait is None else min(wait, 30.0)):
                    await self._listening.wait()

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute("LISTEN cairn_closed")
                    # Query answers (payload: the request id) wake waiters the same way.
                    await conn.execute("LISTEN cairn_query_answered")
                    self._listen_epoch += 1
                    self._listening.set()
                    self._wake_all()  # anything that closed while we were away
                    async for note in conn.notifies():
                        # cairn_closed: "<run id>[ <outcome>]"; cairn_query_answered: the request id.
                        key, _, text = note.payload.partition(" ")
                        watched = self._watched.get(key)
                        waiters = self._waiters.get(key, [])
                        outcome = _notified_outcome(text) if text and (watched or waiters) else None
                        if watched is not None:
                            watched[1] = True
                            watched[2] = outcome if len(text) <= WATCHED_OUTCOME_BYTES else None
                        for fut in waiters:
                            if not fut.done():
                                fut.set_result(outcome)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._listen_epoch += 1  # closes may be missed until the next connection
                self._wake_all()
                await asyncio.sleep(0.5)

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)


def _notified_outcome(text: str) -> dict[str, Any] | None:
    """The outcome in a ``cairn_closed`` payload (see record_workflow_tasks): the keys of
    ``run_outcome``'s row."""
    try:
        outcome = json.loads(text)
    except ValueError:
        return None
    keys = {"status", "workflow_type", "last_type", "last_data"}
    return outcome if isinstance(outcome, dict) and keys <= outcome.keys() else None


def add_visibility(params: dict[str, Any], search_attributes: Mapping[str, Any] | None,
                   memo: Mapping[str, Any] | None) -> None:
    """Validates search attributes and memo and adds them to start_workflow's parameters.

    Non-empty search attributes also go into the ``WorkflowStarted`` data, so that the
    workflow sees them (``workflow.search_attributes()``) the same on every replay.
    """
    attrs = check_search_attributes(search_attributes)
    checked_memo = check_memo(memo)
    params["search_attributes"] = Jsonb(attrs)
    params["memo"] = Jsonb(checked_memo) if checked_memo is not None else None
    if attrs:
        params["data"] = Jsonb({**params["data"].obj, "search_attributes": attrs})


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


class WorkflowHandle(HandleMessages):
    """A workflow: wait for its result, inspect it, signal, query, cancel or terminate it.

    A handle without an explicit run id (from :meth:`Client.start`, ``signal_with_start``,
    ``reset``, ``retry``, or ``get_handle(id)``) acts on the workflow id's newest run at
    each call, so after continue-as-new it reaches the run the chain continued as (as
    Temporal's handles with no run id). ``get_handle(id, run_id)`` is pinned: every call
    acts on that run, closed or not. :meth:`result` follows continue-as-new from the run
    the handle started (or, by workflow id, from the newest run; pinned, from its run).

    Attributes:
        workflow_id: the workflow id.
        run_id: the pinned run; otherwise the run the handle last acted on (at first the
            run it started, ``None`` for ``get_handle(id)`` before any call).
    """

    def __init__(self, client: Client, workflow_id: str, run_id: str | None,
                 signature: Signature | None, *, pinned: bool = False) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.run_id = run_id
        self._signature = signature
        self._pinned = pinned
        # Where result() follows the continue-as-new chain from (None: the newest run).
        self._result_run = run_id
        # The run this handle started (Temporal's first_execution_run_id): cancel and
        # terminate act only on it and the runs that come from it.
        self._first_run = None if pinned else run_id

    def __repr__(self) -> str:
        return f"WorkflowHandle(workflow_id={self.workflow_id!r}, run_id={self.run_id!r})"

    async def _resolve(self, *, wait: float | None = READ_RETRY_SECONDS) -> dict[str, Any]:
        """The run a call acts on: the pinned run, else the workflow id's newest run."""
        row = await self.client._run_row(self.workflow_id, self.run_id if self._pinned else None, wait=wait)
        self.run_id = row["run_id"]
        return row

    async def result(self, timeout: float | None = None) -> Any:
        """Waits for the run to close and returns its result.

        Raises:
            WorkflowFailure: the run failed (``.type``, ``.message``, ``.details``).
            WorkflowCancelled: the run was cancelled.
            WorkflowTerminated: the run was terminated.
            WorkflowTimeout: it did not close within ``timeout`` seconds.
            DatabaseUnavailable: the database stayed out of reach until ``timeout`` passed
                (without one, the wait goes on through restarts and failovers).
        """
        timeout = seconds(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(deadline - loop.time(), 0.0)

        await self.client._ensure_listener(remaining())
        run_id = self._result_run or (await self._resolve(wait=remaining()))["run_id"]
        # A run this client started while listening, with no close seen yet, is open: skip
        # the first read (one statement fewer per start-and-wait). A pass after a close
        # NOTIFY that carried the outcome uses it; every other pass reads.
        known_open = self.client._known_open(run_id)
        notified = self.client._seen_outcome(run_id)  # a close NOTIFY carries the outcome
        while True:
            with self.client._close_waiter(run_id) as closed:
                if not known_open:
                    row = notified or await self._outcome_row(run_id, wait=remaining())
                    notified = None
                    if row["status"] == "continued_as_new":  # follow the chain to its newest run
                        run_id = await self._successor(run_id, wait=remaining())
                        if not self._pinned:
                            self.run_id = run_id
                        if self._result_run is not None:  # a handle by workflow id starts anew
                            self._result_run = run_id
                        continue
                    if row["status"] != "running":
                        self.client._watched.pop(run_id, None)
                        return self._outcome(row)
                known_open = False
                left = remaining()
                if left is not None and left <= 0:
                    raise WorkflowTimeout(f"workflow {self.workflow_id!r} did not finish within {timeout} s")
                # The NOTIFY wakes us; the periodic re-check covers a lost connection.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left or 5.0, 5.0)):
                        notified = await closed

    async def _successor(self, run_id: str, *, wait: float | None = READ_RETRY_SECONDS) -> str:
        """The run that ``run_id`` continued as (created in the same transaction)."""
        async def read(c: psycopg.AsyncConnection[Any]) -> Any:
            return await (await c.execute(q("run_successor"), {"run_id": run_id})).fetchone()

        row = await self.client._read(read, wait=wait)
        if row is None:
            raise WorkflowNotFound(f"run {run_id} of {self.workflow_id!r} continued as new, "
                                   "but its next run is missing")
        return str(row[0])

    async def _outcome_row(self, run_id: str, *, wait: float | None = READ_RETRY_SECONDS) -> dict[str, Any]:
        """The run's status and, once closed, its last event, in one query."""
        async def read(c: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            cur = c.cursor(row_factory=dict_row)
            return await (await cur.execute(q("run_outcome"), {
                "run_id": run_id, "namespace": self.client.namespace, "workflow_id": self.workflow_id})).fetchone()

        row = await self.client._read(read, wait=wait)
        if row is None:
            raise WorkflowNotFound(f"no workflow run {run_id} for id {self.workflow_id!r}")
        return row

    def _outcome(self, row: dict[str, Any]) -> Any:
        etype, data = row["last_type"], row["last_data"] or {}
        if etype == h.WORKFLOW_COMPLETED:
            result = data.get("result")
            if self._signature is not None:
                return self._signature.validate_result(result, f"workflow {row['workflow_type']}")
            return result
        if etype == h.WORKFLOW_CANCELLED:
            raise WorkflowCancelled(f"workflow {self.workflow_id!r} was cancelled", type="WorkflowCancelled")
        if etype == h.WORKFLOW_TERMINATED:
            raise WorkflowTerminated(f"workflow {self.workflow_id!r} was terminated: {data.get('reason') or ''}",
                                     type="WorkflowTerminated", details=data)
        failure = data.get("failure") or {}
        if etype == h.WORKFLOW_TIMED_OUT:
            raise WorkflowTimedOutError(f"workflow {self.workflow_id!r} timed out: {failure.get('message')}",
                                        type="WorkflowTimedOut", details=failure)
        raise WorkflowFailure(
            f"workflow {self.workflow_id!r} failed: {failure.get('type')}: {failure.get('message')}",
            type=str(failure.get("type") or "WorkflowFailed"), details=failure,
        )

    async def describe(self) -> RunDescription:
        """The run's status, pending activities, timers and workflow-task failures."""
        row = await self._resolve()
        params = {"run_id": row["run_id"]}
        # Imported here: cairn.llm loads httpx and the providers (~100 ms per process).

        async def read(c: psycopg.AsyncConnection[Any]) -> tuple[Any, ...]:
            cur = c.cursor(row_factory=dict_row)
            acts = await (await cur.execute(q("pending_activities"), params)).fetchall()
            timers = await (await cur.execute(q("pending_timers"), params)).fetchall()
            task = await (await cur.execute(q("pending_workflow_task"), params)).fetchone()
            last = await (await cur.execute(q("last_history_event"), params)).fetchone()
            saga_events = await (await c.execute(q("saga_events"), params)).fetchall()
            vis = await (await cur.execute(q("run_visibility"), params)).fetchone() or {}
            links = await (await cur.execute(q("run_links"), params)).fetchone() or {}
            llm = llm_calls(await (await cur.execute(q("llm_completions"), params)).fetchall())
            unserved = [{**u, "message": f"no worker registered for {u['kind']} type {u['type']!r} "
                                         f"on queue {u['queue']!r}"}
                        for u in await (await cur.execute(q("unserved_types"), params)).fetchall()]
            return acts, timers, task, last, saga_events, vis, links, llm, unserved

        acts, timers, task, last, saga_events, vis, links, llm, unserved = await self.client._read(read)
        parent = None
        if links.get("parent_run_id") is not None:
            parent = {"workflow_id": links["parent_workflow_id"], "run_id": str(links["parent_run_id"]),
                      "seq": links["parent_seq"], "parent_close_policy": links["parent_close_policy"]}
        return RunDescription(
            workflow_id=row["workflow_id"], run_id=row["run_id"], workflow_type=row["workflow_type"],
            queue=row["queue"], status=row["status"], created_at=row["created_at"],
            closed_at=row["closed_at"], failure=row["failure"],
            history_length=last["seq"] if last else 0,
            pending_activities=acts, pending_timers=timers, workflow_task=task,
            sagas=describe_sagas([Event(s, t, d, a) for s, t, d, a in saga_events]),
            search_attributes=vis.get("search_attributes") or {}, memo=vis.get("memo"),
            reset_from=vis.get("reset_from"),
            parent=parent,
            continued_from=str(links["continued_from"]) if links.get("continued_from") else None,
            continued_to=str(links["continued_to"]) if links.get("continued_to") else None,
            execution_deadline=links.get("execution_deadline"), children=links.get("children") or [],
            llm_calls=llm, llm_totals=llm_totals(llm) if llm else None,
            unserved=unserved,
        )

    async def history(self, after: int = 0) -> list[Event]:
        """The run's history events (after seq ``after``)."""
        row = await self._resolve()

        async def read(c: psycopg.AsyncConnection[Any]) -> list[Event]:
            cur = await c.execute(q("read_history_after"), {"run_id": row["run_id"], "after": after})
            return [Event(s, t, d, a) for s, t, d, a in await cur.fetchall()]

        return await self.client._read(read)

    async def stream(self, activity_seq: int | None = None) -> AsyncIterator[StreamChunk]:
        """Follows the tokens of the run's LLM calls (``chat(..., stream=True)``) as they
        arrive: :class:`~cairn.client.follow.StreamChunk` ``(attempt, text, activity_seq,
        restart)``. A retried attempt starts over with a ``restart`` chunk (its text is never
        appended to the failed attempt's). Ends when the run closes, or when the activity
        ``activity_seq`` (if given) has its outcome recorded."""
        from cairn.client.follow import StreamChunk, follow

        async for item in follow(self, activity_seq=activity_seq, events=False):
            if isinstance(item, StreamChunk):
                yield item

    async def reset(self, *, to_seq: int | None = None, to_last_task: bool = False, reason: str = "",
                    reapply_signals: bool = True) -> WorkflowHandle:
        """Resets this run (see :meth:`Client.reset`); returns a handle on the new run."""
        return await self.client.reset(self.workflow_id, run_id=self._pinned_run(), to_seq=to_seq,
                                       to_last_task=to_last_task, reason=reason, reapply_signals=reapply_signals)

    async def retry(self) -> WorkflowHandle:
        """Retries this run (see :meth:`Client.retry`); returns a handle on the new run."""
        return await self.client.retry(self.workflow_id, run_id=self._pinned_run())

    def _pinned_run(self) -> str | None:
        """The run id to pass on: the pinned run, or None (the newest run)."""
        return self.run_id if self._pinned else None

    async def cancel(self, reason: str = "") -> None:
        """Asks the run to cancel: its code sees ``CancelledError`` at its next await."""
        await self._on_open_run("a cancel request", lambda run_id: self._write_input(
            run_id, h.CANCEL_REQUESTED, {"reason": reason}, what=f"asking workflow {self.workflow_id!r} to cancel",
            check=f"see `cairn history {self.workflow_id}` (or handle.history()) before asking again"), own_chain=True)

    async def _on_open_run(self, what: str, act: Callable[[str], Awaitable[bool]], *,
                           own_chain: bool = False) -> None:
        """Runs ``act`` on the run this call acts on, which must be open (else
        ``WorkflowClosed``, a CairnError: bad input for the CLI, exit 2, nothing written).

        ``act`` returns False when the run closed before it wrote: the handle looks again,
        so one that is not pinned reaches the run the closed one continued as. With
        ``own_chain``, a started handle refuses a newest run that does not come from the
        run it started (a later start of the same id), as Temporal does.
        """
        tried: set[str] = set()
        while True:
            row = await self._resolve()
            if row["status"] != "running" or row["run_id"] in tried:
                raise WorkflowClosed(self.workflow_id, row["run_id"],
                                     "closed" if row["status"] == "running" else row["status"], what)
            if own_chain and not await self._in_own_chain(row["run_id"]):
                raise WorkflowClosed(self.workflow_id, str(self._first_run), "closed", what)
            if await act(row["run_id"]):
                return
            tried.add(row["run_id"])

    async def _in_own_chain(self, run_id: str) -> bool:
        """Whether ``run_id`` is the run this handle started or comes from it (always true
        for a handle that started none)."""
        if self._first_run is None or run_id == self._first_run:
            return True
        async def read(c: psycopg.AsyncConnection[Any]) -> Any:
            return await (await c.execute(q("run_in_chain"), {
                "run_id": run_id, "first": self._first_run, "namespace": self.client.namespace,
                "workflow_id": self.workflow_id})).fetchone()

        row = await self.client._read(read)
        return bool(row and row[0])

    async def _write_input(self, run_id: str, event_type: str, data: dict[str, Any], *,
                           what: str, check: str) -> bool:
        """Writes an input event into the run's inbox; False if the run is closed."""
        async def write(c: psycopg.AsyncConnection[Any]) -> bool:
            cur = await c.execute(q("signal_run"), {"run_id": run_id, "type": event_type, "data": Jsonb(data)})
            return await cur.fetchone() is not None

        return await self.client._write(write, what=what, check=check)

    async def terminate(self, reason: str = "") -> None:
        """Ends the run at once, without running any more workflow code.

        Takes the run's workflow-task lock (waiting for a worker mid-task), so the
        ``WorkflowTerminated`` event is appended by the one writer the run has.
        """
        await self._on_open_run("a terminate request", lambda run_id: self._terminate(run_id, reason),
                                own_chain=True)

    async def _terminate(self, run_id: str, reason: str) -> bool:
        return await self.client._write(
            lambda c: self._terminate_on(c, run_id, reason), what=f"terminating workflow {self.workflow_id!r}",
            check=f"see its status with `cairn describe {self.workflow_id}` (or handle.describe())")

    async def _terminate_on(self, c: psycopg.AsyncConnection[Any], run_id: str, reason: str) -> bool:
        params: dict[str, Any] = {"run_id": run_id, "now": None}
        async with c.transaction():
            cur = c.cursor(row_factory=dict_row)
            locked = None
            for _ in range(10):
                # A worker mid-task may delete the task row while we wait for its lock (the
                # task finished): ensure it again. A closed run gets no row: we stop.
                await c.execute(q("ensure_workflow_task"), params)
                await c.execute(q("lock_workflow_task"), params)
                await cur.execute(q("locked_task_state"), {**params, "run_ids": [run_id], "replay": []})
                locked = await cur.fetchone()
                if locked is not None:
                    break
            if locked is None or locked["status"] != "running":
                raise psycopg.Rollback()  # it closed meanwhile: nothing written
            event = [{"seq": locked["last_seq"] + 1, "type": h.WORKFLOW_TERMINATED, "data": {"reason": reason}}]
            await c.execute(q("append_history"), {**params, "events": Jsonb(event)})
            await c.execute(q("close_run"), {**params, "status": "terminated",
                                             "failure": Jsonb({"type": "WorkflowTerminated", "message": reason})})
            await c.execute(q("finish_workflow_task"), params)
            # Its parent hears of it; its children get their parent close policy.
            await _lifecycle.close_family(c, run_id, h.WORKFLOW_TERMINATED, {"reason": reason}, "terminated")
            return True
        return False


def _prepare(url: str, embedded: bool) -> None:
    with db.connect_sync(url) as conn:
        durability.check_server(conn, who="client")
        if embedded:
            status = db.schema_status(conn)
            if not status.up_to_date:
                db.migrate(url)
        else:
            db.check_schema(conn)
