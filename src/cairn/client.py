"""The client: start workflows, wait for results, inspect and steer runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cairn import _lifecycle, db
from cairn._lifecycle import ID_REUSE_POLICIES, RUN_STATUSES, IdReusePolicy
from cairn._messages import ClientMessages, HandleMessages
from cairn._telemetry import tracer
from cairn.common import (
    Signature,
    check_identifier,
    check_namespace,
    check_queue,
    new_run_id,
    seconds,
    shown,
    to_payload,
)
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.queries import q
from cairn.errors import (
    DatabaseError,
    InputValidationError,
    UnknownWorkflowType,
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
from cairn.saga import describe_sagas
from cairn.visibility import check_memo, check_search_attributes, parse_filter
from cairn.workflow import definition_of

if TYPE_CHECKING:
    from cairn.llm.follow import StreamChunk

IdConflictPolicy = Literal["fail", "use_existing"]
# synchronous_commit=on: an acknowledged start is durable. idle_in_transaction_session_timeout:
# a caller's transaction (start with conn=..., terminate) left open cannot hold a run's
# task lock for ever (cairn.limits.CLIENT_IDLE_TX_TIMEOUT_MS; the worker sets its own).
CONNECTION_OPTIONS = "-c synchronous_commit=on"
CLIENT_CONNECTION_OPTIONS = f"{CONNECTION_OPTIONS} -c idle_in_transaction_session_timeout=60000"
MAX_LIST_LIMIT = 100_000  # runs one list call returns at most (the CLI's --limit too)
WATCHED_RUNS = 10_000  # runs started here whose close the listener tracks (see Client._known_open)
# A watched run keeps the outcome its close NOTIFY carried until result() takes it, up to
# this size (10,000 watched runs: ~10 MB at most); a larger one is read when asked for.
WATCHED_OUTCOME_BYTES = 1024


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

    @property
    def saga(self) -> dict[str, Any] | None:
        """The run's latest saga (see :func:`cairn.saga.describe_sagas`), if it has one."""
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


def _validate_queue(queue: str) -> str:
    return check_queue(queue)


def _lookup_id(workflow_id: str) -> str:
    """A workflow id to look up (see ``check_identifier``'s ``lookup``)."""
    return check_identifier(workflow_id, "the workflow id", lookup=True)


def _lookup_type(name: str) -> str:
    """A workflow type name to look up."""
    return check_identifier(name, "the workflow type", lookup=True)


class Client(ClientMessages):
    """A connection to Cairn's database: start workflows and inspect runs.

    Signals, signal-with-start and queries come from :class:`cairn._messages.ClientMessages`.

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
        pool = AsyncConnectionPool(
            resolved, min_size=1, max_size=max_size, open=False,
            kwargs={"autocommit": True, "options": CLIENT_CONNECTION_OPTIONS},
        )
        try:
            await pool.open(wait=True, timeout=30)
        except Exception as exc:
            await pool.close()
            raise DatabaseError(f"cannot connect to {db.redact(resolved)}: {db.redact(str(exc))}") from None
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
        queue: str = "default",
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
            queue: the workflow queue the run's tasks go to.
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
            InputValidationError: bad arguments, id, queue, policy or timeout; nothing was written.
            WorkflowAlreadyStarted: the id has an open run (``id_conflict="fail"``), or the id
                reuse policy refused (:class:`WorkflowIdReuseRefused`); nothing was written.
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
                run_id = await self._start_on(conn, params, id_conflict)
            else:
                self._watch(params["run_id"])  # before the start commits: no close can be missed
                run_id = ""
                # Autocommit: start_workflow is one atomic statement, committed when it returns.
                try:
                    async with self.pool.connection() as c:
                        run_id = await self._start_on(c, params, id_conflict)
                finally:
                    if run_id != params["run_id"]:  # not started, or the handle of an existing run
                        self._watched.pop(params["run_id"], None)
            span.set_attribute("cairn.run_id", run_id)
        return WorkflowHandle(self, params["workflow_id"], run_id, signature)

    async def _start_params(self, workflow: Callable[..., Any] | str, args: tuple[Any, ...], id: str | None,
                            queue: str, id_conflict: str, *, id_reuse_policy: str = "allow_duplicate",
                            execution_timeout: timedelta | float | None = None,
                            ) -> tuple[dict[str, Any], Signature | None]:
        """Validates a start (before anything is written) and builds its parameters."""
        if id_conflict not in ("fail", "use_existing"):
            raise InputValidationError(f"id_conflict must be 'fail' or 'use_existing', not {id_conflict!r}")
        _lifecycle.check_policy(id_reuse_policy, ID_REUSE_POLICIES, "id_reuse_policy")
        timeout = _lifecycle.check_execution_timeout(seconds(execution_timeout))
        workflow_id = _validate_id(id) if id is not None else new_run_id()
        _validate_queue(queue)
        payload = [to_payload(a) for a in args]
        signature: Signature | None = None
        if isinstance(workflow, str):
            name = workflow
            await self._check_registered(name, payload)
        else:
            d = definition_of(workflow)
            name, signature = d.name, d.signature
            signature.validate_args(payload, f"workflow {name}")
        params = _lifecycle.start_params(
            namespace=self.namespace, workflow_id=workflow_id, workflow_type=name, queue=queue, args=payload,
            id_reuse_policy=id_reuse_policy, execution_timeout=timeout,
        )
        return params, signature

    async def _start_on(self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any],
                        policy: IdConflictPolicy) -> str:
        reads_closed = params.get("id_reuse_policy") != "allow_duplicate"
        while True:
            try:
                async with conn.transaction() if reads_closed else contextlib.nullcontext():
                    if reads_closed:
                        await conn.execute(q("lock_open_run"), params)  # see queries.sql
                    row = await (await conn.execute(q("start_workflow"), params)).fetchone()
                    existing = None if row else \
                        await (await conn.execute(q("open_run_by_workflow_id"), params)).fetchone()
            except psycopg.Error as exc:
                raise db.translate(exc) from None
            run_id = started_run_id(row, existing, params, policy)
            if run_id is not None:
                return run_id

    async def registered_type(self, name: str) -> dict[str, Any]:
        """A workflow type from the registry that workers fill (name, queues, input schema).

        Raises:
            UnknownWorkflowType: no worker has registered this type.
        """
        _lookup_type(name)
        async with self.pool.connection() as c:
            cur = c.cursor(row_factory=dict_row)
            row = await (await cur.execute(q("get_workflow_type"),
                                           {"namespace": self.namespace, "name": name})).fetchone()
            if row is None:
                known = [r["name"] for r in await (await cur.execute(
                    q("list_workflow_types"), {"namespace": self.namespace})).fetchall()]
                hint = f" (known: {', '.join(known)})" if known else " (no worker has registered any type yet)"
                raise UnknownWorkflowType(f"unknown workflow type {shown(name)}{hint}")
        return row

    async def _check_registered(self, name: str, payload: list[Any]) -> None:
        """Validates a start by type name against the registered input schema."""
        import jsonschema

        row = await self.registered_type(name)
        validator = jsonschema.validators.validator_for(row["input_schema"])(row["input_schema"])
        problems = []  # every error, not only the first
        for exc in sorted(validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path]):
            where = "/".join(str(p) for p in exc.absolute_path)
            problems.append(f"{'at ' + where + ': ' if where else ''}{exc.message}")
        if problems:
            raise InputValidationError(f"input for workflow {name!r} is invalid: {'; '.join(problems)}")

    # -- reading

    def get_handle(self, workflow_id: str, run_id: str | None = None) -> WorkflowHandle:
        """A handle on an existing workflow (its newest run unless ``run_id`` is given)."""
        _lookup_id(workflow_id)
        if run_id is not None:
            run_id = _validate_run_id(run_id)
        return WorkflowHandle(self, workflow_id, run_id, None)

    async def _run_row(self, workflow_id: str, run_id: str | None) -> dict[str, Any]:
        _lookup_id(workflow_id)  # reset and retry look up here without a handle
        async with self.pool.connection() as c:
            cur = c.cursor(row_factory=dict_row)
            if run_id is not None:
                await cur.execute(q("get_run"), {"run_id": run_id})
            else:
                await cur.execute(q("latest_run_by_workflow_id"),
                                  {"namespace": self.namespace, "workflow_id": workflow_id})
            row = await cur.fetchone()
        if row is None:
            raise WorkflowNotFound(f"no workflow run with id {shown(workflow_id)}")
        row["run_id"] = str(row["run_id"])
        return row

    async def list(self, *, status: str | None = None, workflow_type: str | None = None,
                   limit: int = 50, where: str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first, optionally filtered by status and workflow type.

        ``where`` is a filter such as ``customer = "acme" AND amount > 10`` (see
        :mod:`cairn.visibility`); with it the rows also carry search attributes and memo.

        Raises:
            InputValidationError: a bad status, limit or filter (the message names the column).
        """
        flt = parse_filter(where) if where is not None else None
        statuses = RUN_STATUSES
        if status is not None and status not in statuses:
            raise InputValidationError(f"status must be one of {', '.join(statuses)}; got {status!r}")
        if workflow_type is not None:
            _lookup_type(workflow_type)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise InputValidationError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}, "
                                       f"not {shown(str(limit))}")
        async with self.pool.connection() as c:
            cur = c.cursor(row_factory=dict_row)
            params = {"namespace": self.namespace, "status": status, "workflow_type": workflow_type, "limit": limit}
            if flt is None:
                await cur.execute(q("list_runs"), params)
            else:
                query = sql.SQL(q("list_runs_where")).format(where=sql.SQL(flt.sql))
                await cur.execute(query, {**params, **flt.params})
            rows = await cur.fetchall()
        for r in rows:
            r["run_id"] = str(r["run_id"])
        return rows

    # -- operator actions (cairn.operators)

    async def reset(self, workflow_id: str, *, run_id: str | None = None, to_seq: int | None = None,
                    to_last_task: bool = False, reason: str = "", reapply_signals: bool = True) -> WorkflowHandle:
        """Starts a new run from the old run's history before the workflow task at ``to_seq``.

        See :func:`cairn.operators.reset`; returns a handle on the new run.
        """
        from cairn import operators

        return await operators.reset(self, workflow_id, run_id=run_id, to_seq=to_seq, to_last_task=to_last_task,
                                     reason=reason, reapply_signals=reapply_signals)

    async def retry(self, workflow_id: str, *, run_id: str | None = None) -> WorkflowHandle:
        """Starts a failed (cancelled, terminated, timed-out) run again from its original input.

        See :func:`cairn.operators.retry`; returns a handle on the new run.
        """
        from cairn import operators

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

    async def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listening.clear()
            self._listener = asyncio.create_task(self._listen())
        if not self._listening.is_set():  # the common case costs no wait at all
            async with asyncio.timeout(30):
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
    if len(existing) > 2 and existing[2] != "running":  # the id reuse policy refused
        raise WorkflowIdReuseRefused(params["workflow_id"], str(existing[0]), str(existing[2]),
                                     str(params.get("id_reuse_policy")))
    if policy == "use_existing":
        return str(existing[0])
    raise WorkflowAlreadyStarted(params["workflow_id"], str(existing[0]))


class WorkflowHandle(HandleMessages):
    """A workflow run: wait for its result, inspect it, signal, query, cancel or terminate it."""

    def __init__(self, client: Client, workflow_id: str, run_id: str | None,
                 signature: Signature | None) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.run_id = run_id
        self._signature = signature

    def __repr__(self) -> str:
        return f"WorkflowHandle(workflow_id={self.workflow_id!r}, run_id={self.run_id!r})"

    async def _resolve(self) -> dict[str, Any]:
        row = await self.client._run_row(self.workflow_id, self.run_id)
        self.run_id = row["run_id"]
        return row

    async def result(self, timeout: float | None = None) -> Any:
        """Waits for the run to close and returns its result.

        Raises:
            WorkflowFailure: the run failed (``.type``, ``.message``, ``.details``).
            WorkflowCancelled: the run was cancelled.
            WorkflowTerminated: the run was terminated.
            WorkflowTimeout: it did not close within ``timeout`` seconds.
        """
        timeout = seconds(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        await self.client._ensure_listener()
        if self.run_id is None:
            await self._resolve()
        assert self.run_id is not None
        # A run this client started while listening, with no close seen yet, is open: skip
        # the first read (one statement fewer per start-and-wait). A pass after a close
        # NOTIFY that carried the outcome uses it; every other pass reads.
        known_open = self.client._known_open(self.run_id)
        notified = self.client._seen_outcome(self.run_id)  # a close NOTIFY carries the outcome
        while True:
            with self.client._close_waiter(self.run_id) as closed:
                if not known_open:
                    row = notified or await self._outcome_row()
                    notified = None
                    if row["status"] == "continued_as_new":  # follow the chain to its newest run
                        self.run_id = await self._successor()
                        continue
                    if row["status"] != "running":
                        self.client._watched.pop(self.run_id, None)
                        return self._outcome(row)
                known_open = False
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise WorkflowTimeout(f"workflow {self.workflow_id!r} did not finish within {timeout} s")
                # The NOTIFY wakes us; the periodic re-check covers a lost connection.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining or 5.0, 5.0)):
                        notified = await closed

    async def _successor(self) -> str:
        """The run that this handle's run continued as (created in the same transaction)."""
        async with self.client.pool.connection() as c:
            row = await (await c.execute(q("run_successor"), {"run_id": self.run_id})).fetchone()
        if row is None:
            raise WorkflowNotFound(f"run {self.run_id} of {self.workflow_id!r} continued as new, "
                                   "but its next run is missing")
        return str(row[0])

    async def _outcome_row(self) -> dict[str, Any]:
        """The run's status and, once closed, its last event, in one query."""
        async with self.client.pool.connection() as c:
            cur = c.cursor(row_factory=dict_row)
            row = await (await cur.execute(q("run_outcome"), {"run_id": self.run_id})).fetchone()
        if row is None:
            raise WorkflowNotFound(f"no workflow run {self.run_id} for id {self.workflow_id!r}")
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
        async with self.client.pool.connection() as c:
            cur = c.cursor(row_factory=dict_row)
            acts = await (await cur.execute(q("pending_activities"), params)).fetchall()
            timers = await (await cur.execute(q("pending_timers"), params)).fetchall()
            task = await (await cur.execute(q("pending_workflow_task"), params)).fetchone()
            last = await (await cur.execute(q("last_history_event"), params)).fetchone()
            saga_events = await (await c.execute(q("saga_events"), params)).fetchall()
            vis = await (await cur.execute(q("run_visibility"), params)).fetchone() or {}
            links = await (await cur.execute(q("run_links"), params)).fetchone() or {}
            # Imported here: cairn.llm loads httpx and the providers (~100 ms per process).
            from cairn.llm.follow import llm_calls, llm_totals

            llm = llm_calls(await (await cur.execute(q("llm_completions"), params)).fetchall())
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
        )

    async def history(self, after: int = 0) -> list[Event]:
        """The run's history events (after seq ``after``)."""
        row = await self._resolve()
        async with self.client.pool.connection() as c:
            cur = await c.execute(q("read_history_after"), {"run_id": row["run_id"], "after": after})
            return [Event(s, t, d, a) for s, t, d, a in await cur.fetchall()]

    async def stream(self, activity_seq: int | None = None) -> AsyncIterator[StreamChunk]:
        """Follows the tokens of the run's LLM calls (``chat(..., stream=True)``) as they
        arrive: :class:`~cairn.llm.follow.StreamChunk` ``(attempt, text, activity_seq,
        restart)``. A retried attempt starts over with a ``restart`` chunk (its text is never
        appended to the failed attempt's). Ends when the run closes, or when the activity
        ``activity_seq`` (if given) has its outcome recorded."""
        from cairn.llm.follow import StreamChunk, follow

        async for item in follow(self, activity_seq=activity_seq, events=False):
            if isinstance(item, StreamChunk):
                yield item

    async def reset(self, *, to_seq: int | None = None, to_last_task: bool = False, reason: str = "",
                    reapply_signals: bool = True) -> WorkflowHandle:
        """Resets this run (see :meth:`Client.reset`); returns a handle on the new run."""
        return await self.client.reset(self.workflow_id, run_id=self.run_id, to_seq=to_seq,
                                       to_last_task=to_last_task, reason=reason, reapply_signals=reapply_signals)

    async def retry(self) -> WorkflowHandle:
        """Retries this run (see :meth:`Client.retry`); returns a handle on the new run."""
        return await self.client.retry(self.workflow_id, run_id=self.run_id)

    async def cancel(self, reason: str = "") -> None:
        """Asks the run to cancel: its code sees ``CancelledError`` at its next await."""
        await self._send(h.CANCEL_REQUESTED, {"reason": reason})

    async def _send(self, event_type: str, data: dict[str, Any]) -> None:
        row = await self._resolve()
        # WorkflowClosed (a CairnError): bad input for the CLI (exit 2), nothing written.
        if row["status"] != "running":
            raise WorkflowClosed(self.workflow_id, row["run_id"], row["status"], "a cancel request")
        async with self.client.pool.connection() as c:
            cur = await c.execute(q("signal_run"), {"run_id": row["run_id"], "type": event_type,
                                                    "data": Jsonb(data)})
            if await cur.fetchone() is None:
                raise WorkflowClosed(self.workflow_id, row["run_id"], "closed", "a cancel request")

    async def terminate(self, reason: str = "") -> None:
        """Ends the run at once, without running any more workflow code.

        Takes the run's workflow-task lock (waiting for a worker mid-task), so the
        ``WorkflowTerminated`` event is appended by the one writer the run has.
        """
        row = await self._resolve()
        if row["status"] != "running":
            raise WorkflowClosed(self.workflow_id, row["run_id"], row["status"], "a terminate request")
        params: dict[str, Any] = {"run_id": row["run_id"], "now": None}
        async with self.client.pool.connection() as c, c.transaction():
            cur = c.cursor(row_factory=dict_row)
            locked = None
            for _ in range(10):
                # A worker mid-task may delete the task row while we wait for its lock (the
                # task finished): ensure it again. A closed run gets no row: we stop.
                await c.execute(q("ensure_workflow_task"), params)
                await c.execute(q("lock_workflow_task"), params)
                await cur.execute(q("locked_task_state"), {**params, "run_ids": [row["run_id"]], "replay": []})
                locked = await cur.fetchone()
                if locked is not None:
                    break
            if locked is None or locked["status"] != "running":
                raise WorkflowClosed(self.workflow_id, row["run_id"], "closed", "a terminate request")
            event = [{"seq": locked["last_seq"] + 1, "type": h.WORKFLOW_TERMINATED, "data": {"reason": reason}}]
            await c.execute(q("append_history"), {**params, "events": Jsonb(event)})
            await c.execute(q("close_run"), {**params, "status": "terminated",
                                             "failure": Jsonb({"type": "WorkflowTerminated", "message": reason})})
            await c.execute(q("finish_workflow_task"), params)
            # Its parent hears of it; its children get their parent close policy.
            await _lifecycle.close_family(c, row["run_id"], h.WORKFLOW_TERMINATED, {"reason": reason}, "terminated")


def _prepare(url: str, embedded: bool) -> None:
    from cairn import limits

    with db.connect_sync(url) as conn:
        row = conn.execute(limits.DURABILITY_SQL).fetchone()
        limits.check_durability({"fsync": row[0], "synchronous_commit": row[1]} if row else {}, who="client")
        if embedded:
            status = db.schema_status(conn)
            if not status.up_to_date:
                db.migrate(url)
        else:
            db.check_schema(conn)
