"""The client: start workflows, wait for results, inspect and steer runs."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar

from cairn.client import activities, batches, operators, pauses, schedules, withstart
from cairn.client.activities import AsyncActivityHandle
from cairn.client.batches import BatchDescription, BatchHandle, BatchPreview
from cairn.client.checks import (
    READ_RETRY_SECONDS,
    check_input,
    lookup_id,
    lookup_type,
    validate_id,
    validate_queue,
    validate_run_id,
)
from cairn.client.handle import WorkflowHandle
from cairn.client.limits import ConcurrencyLimits
from cairn.client.listener import CloseListener
from cairn.client.messages import QUERY_TIMEOUT_SECONDS
from cairn.client.records import RunPage, StartTarget
from cairn.client.retention import NamespaceHandle
from cairn.client.schedules import ScheduleHandle
from cairn.client.updates import WithStartWorkflowOperation, WorkflowUpdateHandle, WorkflowUpdateStage
from cairn.client.workers import WorkerInfo
from cairn.errors import (
    DatabaseUnavailable,
    InputValidationError,
    OutcomeUnknown,
    WorkflowNotFound,
)
from cairn.options import (
    ID_REUSE_POLICIES,
    RUN_STATUSES,
    IdReusePolicy,
    Priority,
    as_priority,
    check_execution_timeout,
    check_key,
    check_namespace,
    check_policy,
    check_start_delay,
    new_run_id,
    seconds,
    shown,
)
from cairn.payloads import Signature, check_memo, to_payload
from cairn.schedules import Schedule, ScheduleBackfill
from cairn.store import db, lifecycle, runs
from cairn.store import payloads as store_payloads
from cairn.store import retention as store_retention
from cairn.store import workers as store_workers
from cairn.store.db import CLIENT_CONNECTION_OPTIONS
from cairn.store.filters import Filter, parse_filter
from cairn.store.payloads import PayloadStats, PayloadSweep
from cairn.telemetry import tracer
from cairn.visibility import check_search_attributes
from cairn.workflow import definition_of

log = logging.getLogger("cairn.client")

IdConflictPolicy = Literal["fail", "use_existing", "terminate_existing"]
ID_CONFLICT_POLICIES = ("fail", "use_existing", "terminate_existing")
TERMINATED_BY_START = "terminated by a new start of its workflow id (id_conflict='terminate_existing')"
DEFAULT_QUEUE = "default"  # where a start goes when no queue is given and no worker registered its type
# A start of an @workflow.defn function without a queue asks the registry which queue serves
# its type; a client remembers an answer naming one queue for this long (a round trip
# saved per start: the registry changes when workers of a new queue start).
QUEUE_CACHE_SECONDS = 10.0
MAX_LIST_LIMIT = 100_000  # runs one list call returns at most (the CLI's --limit too)

T = TypeVar("T")


class Client:
    """A connection to Cairn's database: start workflows, signal, query and inspect runs.

    Use :meth:`connect`; close with :meth:`close` or ``async with``.

    Attributes:
        listener: the close listener (:class:`~cairn.client.listener.CloseListener`) that
            wakes ``result()`` and ``query()``.
    """

    def __init__(self, pool: db.Pool, url: str, namespace: str = "default") -> None:
        self.pool = pool
        self.url = url
        self.namespace = check_namespace(namespace)
        self.listener = CloseListener(url)
        self._queues: dict[str, tuple[float, str]] = {}  # workflow type -> (when, its one queue): _cached_queue
        self._warned: set[str] = set()  # start warnings logged: _warn

    @classmethod
    async def connect(cls, url: str | None = None, *, namespace: str = "default",
                      max_size: int = 10, check_schema: bool = True) -> Client:
        """Connects to ``url`` (default: ``CAIRN_DATABASE_URL``, else the embedded server).

        With the embedded server the schema is migrated on first use.
        """
        return await cls._open(url, namespace=namespace, max_size=max_size, check_schema=check_schema,
                              options=CLIENT_CONNECTION_OPTIONS)

    @classmethod
    async def _open(cls, url: str | None, *, namespace: str, max_size: int, check_schema: bool,
                   options: str) -> Client:
        """:meth:`connect` with the sessions' server ``options`` (the web view's are read-only).

        Raises:
            DatabaseUnavailable: no session could be opened in 30 s (the URL's password masked).
        """
        check_namespace(namespace)  # before connecting
        resolved, embedded = await asyncio.to_thread(db.resolve_url, url)
        db.remember_secret(resolved)
        if embedded or check_schema:
            await asyncio.to_thread(db.ensure_ready, resolved, embedded, who="client")
        return cls(await db.open_pool(resolved, max_size=max_size, options=options), resolved, namespace)

    async def close(self) -> None:
        await self.listener.close()
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
        conn: runs.Conn | None = None,
        search_attributes: Mapping[str, Any] | None = None,
        memo: Mapping[str, Any] | None = None,
        id_reuse_policy: IdReusePolicy = "allow_duplicate",
        execution_timeout: timedelta | float | None = None,
        start_delay: timedelta | float | None = None,
        priority: Priority | int | None = None,
        concurrency_key: str | None = None,
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
                :class:`WorkflowAlreadyStarted`; ``"use_existing"`` returns its handle;
                ``"terminate_existing"`` terminates it and starts the new run, in one
                transaction (Temporal's ``TERMINATE_EXISTING``; with the default id reuse
                policy only).
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
            start_delay: the run exists at once, but its first workflow task waits this long
                (seconds or a ``timedelta``), as Temporal's ``start_delay``; signals sent
                meanwhile are kept for it.
            priority: a :class:`cairn.Priority` (or a level, 1 first to 5 last; default 3):
                the run's place in its queue, inherited by its activities and children; a
                ``fairness_key`` shares a level fairly among keys, by ``fairness_weight``.
            concurrency_key: at most the key's limit (``client.limits``) of its runs are open
                and started at once; the others wait, created, and start as runs of the key close.

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
                                                         execution_timeout=execution_timeout,
                                                         start_delay=start_delay, priority=priority,
                                                         concurrency_key=concurrency_key)
            add_visibility(params, search_attributes, memo)
            span.set_attributes({"cairn.workflow_id": params["workflow_id"],
                                 "cairn.workflow_type": params["workflow_type"]})
            if conn is not None:  # the caller's transaction: theirs to retry
                run_id = await runs.translated(
                    lifecycle.start_terminating_existing(conn, params, TERMINATED_BY_START)
                    if id_conflict == "terminate_existing" else runs.start(conn, params, id_conflict))
            else:
                self.listener.watch(params["run_id"])  # before the start commits: no close can be missed
                run_id = ""
                try:
                    run_id = await self._start_idempotently(params, id_conflict)
                finally:
                    if run_id != params["run_id"]:  # not started, or the handle of an existing run
                        self.listener.watched.pop(params["run_id"], None)
            span.set_attribute("cairn.run_id", run_id)
        return WorkflowHandle(self, params["workflow_id"], run_id, signature)

    async def _start_params(self, workflow: Callable[..., Any] | str, args: tuple[Any, ...], id: str | None,
                            queue: str | None, id_conflict: str, *, id_reuse_policy: str = "allow_duplicate",
                            execution_timeout: timedelta | float | None = None,
                            start_delay: timedelta | float | None = None,
                            priority: Priority | int | None = None, concurrency_key: str | None = None,
                            ) -> tuple[dict[str, Any], Signature | None]:
        """Validates a start (before anything is written) and builds its parameters."""
        if id_conflict not in ID_CONFLICT_POLICIES:
            raise InputValidationError(f"id_conflict must be one of {', '.join(ID_CONFLICT_POLICIES)}, "
                                       f"not {id_conflict!r}")
        if id_conflict == "terminate_existing" and id_reuse_policy != "allow_duplicate":
            raise InputValidationError("id_conflict='terminate_existing' needs id_reuse_policy='allow_duplicate': "
                                       "the run it terminates would count as a closed run of the id")
        check_policy(id_reuse_policy, ID_REUSE_POLICIES, "id_reuse_policy")
        timeout = check_execution_timeout(seconds(execution_timeout))
        delay = check_start_delay(start_delay)
        place = as_priority(priority)
        if concurrency_key is not None:
            check_key(concurrency_key, "concurrency_key")
        workflow_id = validate_id(id) if id is not None else new_run_id()
        if queue is not None:
            validate_queue(queue)
        payload = [to_payload(a) for a in args]
        signature: Signature | None = None
        if isinstance(workflow, str):
            name = workflow
            target = await self.start_target(name, queue)
            if target.input_schema is not None:
                check_input(name, target.input_schema, payload)
            self._warn(target.warning)  # None when registered
            queue = target.queue
        else:
            d = definition_of(workflow)
            name, signature = d.name, d.signature
            signature.validate_args(payload, f"workflow {name}")
            if queue is None:
                queue = await self._cached_queue(name)
        params = lifecycle.start_params(
            namespace=self.namespace, workflow_id=workflow_id, workflow_type=name, queue=queue, args=payload,
            id_reuse_policy=id_reuse_policy, execution_timeout=timeout, start_delay=delay,
            priority=place, concurrency_key=concurrency_key,
        )
        return params, signature

    async def _start_idempotently(self, params: dict[str, Any], policy: IdConflictPolicy) -> str:
        """Starts the run on a pooled connection (autocommit: start_workflow is one atomic
        statement, committed when it returns). A start whose connection is lost may have
        committed: it is tried again on a fresh connection, which is safe because the run id
        is chosen here: the run found under it is this start's (see started_run_id)."""
        tries = 0

        async def attempt(c: runs.Conn) -> str:
            nonlocal tries
            tries += 1
            if tries > 1 and await runs.run_exists(c, params):
                return str(params["run_id"])  # the lost attempt had committed
            if policy == "terminate_existing":
                return await lifecycle.start_terminating_existing(c, params, TERMINATED_BY_START)
            return await runs.start(c, params, policy)

        try:
            return await self._read(attempt)
        except DatabaseUnavailable as exc:
            if not tries:
                raise  # no connection was had: nothing was sent
            raise OutcomeUnknown(
                f"the connection to the database was lost while starting workflow {params['workflow_id']!r} "
                f"(run {params['run_id']}), and it stayed out of reach ({exc}): look for that run with "
                f"`cairn describe {params['workflow_id']}` before starting it again") from None

    async def _read(self, read: runs.Op[T], *, wait: float | None = READ_RETRY_SECONDS) -> T:
        """Runs ``read`` on a pooled connection, again on a fresh one after a lost connection
        or a read-only session (see :func:`cairn.store.runs.retrying`), for up to ``wait``
        seconds (None: for as long as it takes). Only for what is safe to repeat: reads, and writes idempotent
        by construction.

        Raises:
            DatabaseUnavailable: the database stayed out of reach for ``wait`` seconds.
            DatabaseError: another database error (translated, never a psycopg one).
        """
        return await runs.retrying(self.pool, read, wait=wait)

    async def _write(self, write: runs.Op[T], *, what: str, check: str) -> T:
        """Runs ``write``, which must not be repeated blindly, on a pooled connection. Only a
        write that surely did nothing runs again: no connection could be had, or a read-only
        session refused it (a failover's; the pool replaces the session).

        Raises:
            OutcomeUnknown: the connection was lost with the write on its way (``what`` it
                was; ``check`` says how to find out whether it took effect).
            DatabaseError: the database stayed out of reach (``DatabaseUnavailable``) or
                read-only for 30 s, or another database error.
        """
        return await runs.retrying(self.pool, write, wait=READ_RETRY_SECONDS, lost=(what, check))

    async def execute(self, workflow: Callable[..., Any] | str, *args: Any, result_timeout: float | None = None,
                      **options: Any) -> Any:
        """Starts a run (:meth:`start`, with the same options) and returns its result
        (Temporal's ``execute_workflow``).

        Raises:
            As :meth:`start`, then as :meth:`WorkflowHandle.result` (``WorkflowFailure``,
            ``WorkflowTimeout`` past ``result_timeout`` seconds ...).
        """
        handle = await self.start(workflow, *args, **options)
        return await handle.result(timeout=result_timeout)

    async def start_target(self, name: str, queue: str | None = None) -> StartTarget:
        """Where a start of workflow type ``name`` goes, from the registry that workers fill
        (one input schema per queue): ``queue`` if given, else the one queue whose workers
        registered the type, else the default queue. ``input_schema`` is None when no worker
        has registered the type on that queue yet (the run would wait for one).

        Raises:
            InputValidationError: no queue given, and the type is registered on several.
        """
        lookup_type(name)
        if queue is not None:
            validate_queue(queue)
        rows, known = await self._read(lambda c: runs.registered_types(c, self.namespace, name))
        queues = tuple(r.queue for r in rows)
        if queue is None and len(rows) > 1:
            raise InputValidationError(f"workflow type {name!r} is registered on several queues "
                                       f"({', '.join(queues)}): choose one (--queue, or queue=)")
        if queue is None:
            queue = queues[0] if rows else DEFAULT_QUEUE
            inferred = True
        else:
            inferred = False
        row = next((r for r in rows if r.queue == queue), None)
        if row is None:
            return StartTarget(name, queue, None, inferred, queues, known)
        return StartTarget(name, queue, row.input_schema, inferred)

    def _warn(self, warning: str | None) -> None:
        if warning is not None and warning not in self._warned:  # once, not once per start of a backlog
            self._warned.add(warning)
            log.warning("%s", warning)

    async def _cached_queue(self, name: str) -> str:
        """The queue of a start of an ``@workflow.defn`` function given none (see
        :meth:`start_target`); an answer naming a registered queue is remembered for
        QUEUE_CACHE_SECONDS."""
        cached = self._queues.get(name)
        if cached is not None and time.monotonic() - cached[0] < QUEUE_CACHE_SECONDS:
            return cached[1]
        target = await self.start_target(name)
        self._warn(target.warning)
        if target.warning is None:
            self._queues[name] = (time.monotonic(), target.queue)
        return target.queue

    # -- reading

    def get_handle(self, workflow_id: str, run_id: str | None = None) -> WorkflowHandle:
        """A handle on an existing workflow: each call acts on its newest run (following
        continue-as-new), or on run ``run_id`` alone if given (see :class:`WorkflowHandle`)."""
        lookup_id(workflow_id)
        if run_id is not None:
            run_id = validate_run_id(run_id)
        return WorkflowHandle(self, workflow_id, run_id, None, pinned=run_id is not None)

    async def _run_row(self, workflow_id: str, run_id: str | None, *,
                       wait: float | None = READ_RETRY_SECONDS) -> runs.Run:
        lookup_id(workflow_id)  # reset and retry look up here without a handle
        row = await self._read(lambda c: runs.run(c, self.namespace, workflow_id, run_id), wait=wait)
        if row is None:
            which = f"run {run_id} for id" if run_id else "run with id"
            raise WorkflowNotFound(f"no workflow {which} {shown(workflow_id)}")
        return row

    async def _list_rows(self, status: str | None, workflow_type: str | None, limit: int, flt: Filter | None,
                         page_token: str | None) -> list[dict[str, Any]]:
        """Up to ``limit`` + 1 rows: the extra one says whether another page follows."""
        statuses = RUN_STATUSES
        if status is not None and status not in statuses:
            raise InputValidationError(f"status must be one of {', '.join(statuses)}; got {status!r}")
        if workflow_type is not None:
            lookup_type(workflow_type)
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
        return await self._read(lambda c: runs.list_runs(c, params, flt))

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
                  "before": page_token}
        total, before = await self._read(lambda c: runs.count_runs(c, params, flt))
        more = len(rows) > limit
        return RunPage(runs=rows[:limit], total=total, skipped=before,
                       next_page_token=rows[limit - 1]["run_id"] if more else None)

    # -- messages (the checks and limits: cairn.client.messages)

    async def signal(self, workflow_id: str, signal: str | Callable[..., Any], *args: Any,
                     run_id: str | None = None) -> None:
        """Sends a signal to a workflow's open run (see :meth:`WorkflowHandle.signal`)."""
        await self.get_handle(validate_id(workflow_id), run_id).signal(signal, *args)

    async def query(self, workflow_id: str, query: str | Callable[..., Any], *args: Any, run_id: str | None = None,
                    timeout: float = QUERY_TIMEOUT_SECONDS) -> Any:
        """Queries a workflow's newest run (see :meth:`WorkflowHandle.query`)."""
        return await self.get_handle(validate_id(workflow_id), run_id).query(query, *args, timeout=timeout)

    async def signal_with_start(self, workflow: Callable[..., Any] | str, *args: Any, id: str,
                                signal: str | Callable[..., Any], signal_payload: Any = None,
                                signal_args: Sequence[Any] | None = None, queue: str | None = None,
                                start_delay: timedelta | float | None = None, priority: Priority | int | None = None,
                                concurrency_key: str | None = None) -> WorkflowHandle:
        """Signals the open run of workflow ``id``, starting one first if none is open.

        Start and signal are one transaction: a new run finds the signal in its first
        workflow task's inbox, and two concurrent calls produce one run with both signals.

        Args:
            workflow: an ``@workflow.defn`` function, or a registered workflow type name.
            args: the workflow's arguments (used only if a run is started).
            id: the workflow id.
            signal: the signal's name, or a workflow class's ``@workflow.signal`` method.
            signal_payload: the signal's one argument.
            signal_args: the signal's arguments, instead of ``signal_payload``.
            queue: the queue of a started run (default: as :meth:`cairn.Client.start`).
            start_delay: of a started run (see :meth:`start`): as in Temporal, the signal
                is recorded at once and the delay still applies.
            priority, concurrency_key: of a started run, as :meth:`start` takes them (an
                open run keeps its own).

        Returns:
            A handle on the run that received the signal.

        Raises:
            InputValidationError: bad arguments, id, queue, signal name or payload, priority
                or concurrency key; nothing was written.
        """
        return await withstart.signal_with_start(
            self, workflow, args, id=id, signal=signal, signal_payload=signal_payload, signal_args=signal_args,
            queue=queue, start_delay=start_delay, priority=priority, concurrency_key=concurrency_key)

    async def start_update_with_start(
            self, workflow: Callable[..., Any] | str, *args: Any, id: str, update: str | Callable[..., Any],
            update_args: Sequence[Any] = (), update_id: str | None = None,
            wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.ACCEPTED, queue: str | None = None,
            timeout: float | None = None, result_type: Any = None, priority: Priority | int | None = None,
            concurrency_key: str | None = None,
            _operation: WithStartWorkflowOperation | None = None) -> WorkflowUpdateHandle:
        """Sends update ``update`` to the open run of workflow ``id``, starting one first if
        none is open (Temporal's update-with-start): start and update are one transaction.
        Waits as :meth:`WorkflowHandle.start_update`; ``.result()`` on the returned handle
        waits for the handler. ``priority`` and ``concurrency_key`` are a started run's, as
        :meth:`start` takes them (an open run keeps its own).

        Raises:
            InputValidationError: bad arguments, id, queue, update name or arguments,
                priority or concurrency key; nothing was written.
            WorkflowUpdateFailedError: the update was rejected.
            WorkflowUpdateTimeout: it did not reach ``wait_for_stage`` within ``timeout``.
        """
        return await withstart.update_with_start(
            self, workflow, args, id=id, update=update, update_args=update_args, update_id=update_id,
            wait_for_stage=wait_for_stage, queue=queue, timeout=timeout, result_type=result_type,
            priority=priority, concurrency_key=concurrency_key, operation=_operation)

    async def execute_update_with_start(
            self, workflow: Callable[..., Any] | str, *args: Any, id: str, update: str | Callable[..., Any],
            update_args: Sequence[Any] = (), update_id: str | None = None, queue: str | None = None,
            timeout: float | None = None, result_type: Any = None, priority: Priority | int | None = None,
            concurrency_key: str | None = None) -> Any:
        """:meth:`start_update_with_start`, then the update's result."""
        handle = await self.start_update_with_start(
            workflow, *args, id=id, update=update, update_args=update_args, update_id=update_id,
            wait_for_stage=WorkflowUpdateStage.COMPLETED, queue=queue, timeout=timeout, result_type=result_type,
            priority=priority, concurrency_key=concurrency_key)
        return await handle.result()

    async def start_update_with_start_workflow(
            self, update: str | Callable[..., Any], *args: Any, start_workflow_operation: WithStartWorkflowOperation,
            id: str | None = None, wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.ACCEPTED,
            timeout: float | None = None, result_type: Any = None) -> WorkflowUpdateHandle:
        """Temporal's form of :meth:`start_update_with_start`: the start is described by a
        :class:`WithStartWorkflowOperation` (its priority and concurrency key too), whose
        ``workflow_handle()`` gives the run's handle afterwards, even when the update failed;
        ``id`` is the update's id."""
        op = start_workflow_operation
        if not isinstance(op, WithStartWorkflowOperation):
            raise InputValidationError("start_workflow_operation must be a WithStartWorkflowOperation")
        try:
            return await self.start_update_with_start(
                op.workflow, *op.args, id=op.id, update=update, update_args=args, update_id=id,
                wait_for_stage=wait_for_stage, queue=op.queue, timeout=timeout, result_type=result_type,
                priority=op.priority, concurrency_key=op.concurrency_key, _operation=op)
        except BaseException as exc:
            op._failed(exc)  # a start that did not happen (a handle set already stays)
            raise

    async def execute_update_with_start_workflow(
            self, update: str | Callable[..., Any], *args: Any, start_workflow_operation: WithStartWorkflowOperation,
            id: str | None = None, timeout: float | None = None, result_type: Any = None) -> Any:
        """:meth:`start_update_with_start_workflow`, then the update's result (Temporal's
        ``execute_update_with_start_workflow``)."""
        sent = await self.start_update_with_start_workflow(
            update, *args, start_workflow_operation=start_workflow_operation, id=id,
            wait_for_stage=WorkflowUpdateStage.COMPLETED, timeout=timeout, result_type=result_type)
        return await sent.result()

    # -- schedules (cairn.client.schedules)

    async def create_schedule(self, id: str, schedule: Schedule, *, trigger_immediately: bool = False,
                              backfill: Sequence[ScheduleBackfill] = ()) -> ScheduleHandle:
        """Creates a schedule: a run of ``schedule.action`` per slot of ``schedule.spec``, fired
        exactly once per slot by the workers' maintenance loops (Temporal's ``create_schedule``).

        Raises:
            InputValidationError: a bad id, spec, policy or action; nothing was written.
            ScheduleAlreadyRunning: a schedule has this id.
        """
        return await schedules.create(self, id, schedule, trigger_immediately=trigger_immediately,
                                      backfill=backfill)

    def get_schedule_handle(self, id: str) -> ScheduleHandle:
        """A handle on schedule ``id`` (describe, pause, unpause, trigger, backfill, update, delete)."""
        return ScheduleHandle(self, id)

    async def list_schedules(self) -> schedules.ScheduleList:
        """The namespace's schedules, by id."""
        return await schedules.list_schedules(self)

    @property
    def limits(self) -> ConcurrencyLimits:
        """This namespace's per-key concurrency limits: ``set``, ``list``, ``delete``."""
        return ConcurrencyLimits(self)

    def get_namespace_handle(self) -> NamespaceHandle:
        """This client's namespace: its retention and archive, and purges of closed runs."""
        return NamespaceHandle(self, self.namespace)

    # -- the payload store (cairn.store.payloads)

    async def payload_stats(self, workflow_id: str | None = None, run_id: str | None = None) -> PayloadStats:
        """The payload store's size (``cairn db payloads``): payloads stored once, their bytes
        as JSON and as stored, the runs referring to them; with ``workflow_id``, what that
        run (the newest, or ``run_id``) refers to.

        Raises:
            WorkflowNotFound: no such run.
        """
        if workflow_id is None:
            return await self._read(store_payloads.stats)
        run = (await self.get_handle(workflow_id, run_id)._resolve()).run_id
        return await self._read(lambda c: store_payloads.stats(c, run))

    async def sweep_payloads(self, *, dry_run: bool = False,
                             grace: timedelta = store_payloads.SWEEP_GRACE) -> PayloadSweep:
        """Removes the stored payloads no run links, stored more than ``grace`` ago, the whole
        table in slices (``cairn db payloads --sweep``; the workers' retention pass sweeps a
        few slices each time). ``dry_run``: only count them. A payload being linked is never
        taken (migration 0026). Safe to repeat."""
        if dry_run:
            return await self._read(lambda c: store_retention.unlinked_payloads(c, grace=grace))

        async def go(conn: Any) -> PayloadSweep:
            return (await store_retention.sweep(conn, grace=grace))[0]

        return await self._read(go)

    # -- workers (cairn.client.workers)

    async def list_workers(self, *, include_inactive: bool = False,
                           queue: str | None = None) -> builtins.list[WorkerInfo]:
        """The namespace's workers (``cairn workers``), live ones first, then by identity.

        Args:
            include_inactive: also the stale (no heartbeat within their liveness window: killed, wedged
                or cut off) and stopped ones, kept for a day after their last heartbeat.
            queue: only the workers of this queue (Temporal's ``task-queue describe``).
        """
        if queue is not None:
            validate_queue(queue)
        return await self._read(lambda c: store_workers.list_workers(c, self.namespace, include_all=include_inactive,
                                                                   queue=queue))

    async def count(self, *, where: str | None = None, status: str | None = None,
                    workflow_type: str | None = None) -> int:
        """How many runs of the namespace match (Temporal's ``count_workflows``): a
        ``where`` filter as :meth:`list` takes, a status, a workflow type.

        Raises:
            InputValidationError: a bad filter (the message names the column) or status.
        """
        flt = parse_filter(where) if where is not None else None
        if status is not None and status not in RUN_STATUSES:
            raise InputValidationError(f"status must be one of {', '.join(RUN_STATUSES)}; got {status!r}")
        params = {"namespace": self.namespace, "status": status, "workflow_type": workflow_type, "before": None}
        return (await self._read(lambda c: runs.count_runs(c, params, flt)))[0]

    # -- batch operations (cairn.client.batches)

    async def start_batch(self, kind: str, *, where: str, reason: str = "",
                          signal: str | Callable[..., Any] | None = None, signal_args: Sequence[Any] = (),
                          reset_to: str | int | None = None, reapply_signals: bool = True) -> BatchHandle:
        """Starts a batch operation on every run the filter ``where`` matches now (Temporal's
        ``temporal workflow terminate --query``): ``kind`` is ``cancel``, ``terminate``,
        ``signal`` (``signal`` and ``signal_args``), ``reset`` (``reset_to``: ``"first"``,
        ``"last"`` or a seq; ``reapply_signals``) or ``retry``.

        The matching runs are frozen when it starts. Any worker executes it, or whoever
        waits for it (``handle.wait()``), in chunks that each act and record in one
        transaction: it survives restarts and acts on each run once. A run it cannot act on
        is *skipped* (a terminate of a closed run) or *failed* (a reset to a seq the run
        lacks), with the reason. A reason given (or ``batch <id>``) is recorded with each
        cancel, termination and reset.

        Raises:
            InputValidationError: a bad kind, filter, signal, argument, reset point or
                reason; nothing was written.
        """
        params = batches.batch_params(kind, reason=reason, signal=signal, signal_args=signal_args,
                                      reset_to=reset_to, reapply_signals=reapply_signals)
        return await batches.start(self, kind, where, params)

    async def preview_batch(self, kind: str, *, where: str, reason: str = "",
                            signal: str | Callable[..., Any] | None = None, signal_args: Sequence[Any] = (),
                            reset_to: str | int | None = None, reapply_signals: bool = True) -> BatchPreview:
        """What :meth:`start_batch` with these arguments would act on, checked the same way:
        how many runs match, per status, and the first few (the CLI's ``--dry-run``).
        Writes nothing."""
        params = batches.batch_params(kind, reason=reason, signal=signal, signal_args=signal_args,
                                      reset_to=reset_to, reapply_signals=reapply_signals)
        return await batches.preview(self, kind, where, params)

    def get_batch_handle(self, batch_id: str) -> BatchHandle:
        """A handle on batch ``batch_id`` (describe, wait, cancel, targets)."""
        return BatchHandle(self, batch_id)

    async def list_batches(self, *, limit: int = 50) -> builtins.list[BatchDescription]:
        """The namespace's batches, newest first."""
        return await batches.list_batches(self, limit)

    async def pause(self, *, activity_type: str | None = None, queue: str | None = None, note: str = "") -> bool:
        """Pauses attempts of a type and/or on a queue (:mod:`cairn.client.pauses`). False: paused already."""
        return await pauses.pause(self, activity_type, queue, note)

    async def unpause(self, *, activity_type: str | None = None, queue: str | None = None) -> bool:
        """Lifts a :meth:`pause` (the same arguments); False if there was none."""
        return await pauses.unpause(self, activity_type, queue)

    async def list_pauses(self) -> builtins.list[pauses.Pause]:
        """Everything paused in the namespace: runs, activities, activity types, queues."""
        return await pauses.list_pauses(self)

    # -- asynchronous activity completion (cairn.client.activities)

    async def complete_activity(self, task_token: str | bytes, result: Any = None) -> None:
        """Completes an activity that raised ``activity.raise_complete_async()``, by the
        task token it handed out; the result reaches its workflow as a returned one would.

        Raises:
            StaleTaskToken: a newer attempt exists, the activity has its outcome, or the run
                is closed; nothing was written.
            InputValidationError: not a task token of this database, or a result that
                cannot be recorded.
        """
        await activities.complete(self, task_token, result)

    async def fail_activity(self, task_token: str | bytes, error: BaseException | str) -> str:
        """Fails the attempt by its task token; its retry policy decides, as for an error
        the activity raised (``ApplicationError(..., non_retryable=True)`` stops retries).
        Returns ``"retrying"``, ``"failed"`` or ``"cancelled"``. Raises as
        :meth:`complete_activity`."""
        return await activities.fail(self, task_token, error)

    async def heartbeat_activity(self, task_token: str | bytes, details: Any = None) -> None:
        """Heartbeats the attempt by its task token (its heartbeat timeout starts again).

        Raises:
            AsyncActivityCancelled: the workflow asked the activity to stop.
            StaleTaskToken: as :meth:`complete_activity`.
        """
        await activities.heartbeat(self, task_token, details)

    def get_async_activity_handle(self, task_token: str | bytes) -> AsyncActivityHandle:
        """A handle on the attempt a task token names (Temporal's name)."""
        return AsyncActivityHandle(self, task_token)

    async def reset(self, workflow_id: str, *, run_id: str | None = None, to_seq: int | None = None,
                    to_last_task: bool = False, reason: str = "", reapply_signals: bool = True) -> WorkflowHandle:
        """Starts a new run from the old run's history before the workflow task at ``to_seq``.

        See :func:`cairn.client.operators.reset`; returns a handle on the new run.
        """
        return await operators.reset(self, workflow_id, run_id=run_id, to_seq=to_seq, to_last_task=to_last_task,
                                     reason=reason, reapply_signals=reapply_signals)

    async def retry(self, workflow_id: str, *, run_id: str | None = None) -> WorkflowHandle:
        """Starts a failed (cancelled, terminated, timed-out) run again from its original input.

        See :func:`cairn.client.operators.retry`; returns a handle on the new run.
        """
        return await operators.retry(self, workflow_id, run_id=run_id)


def add_visibility(params: dict[str, Any], search_attributes: Mapping[str, Any] | None,
                   memo: Mapping[str, Any] | None) -> None:
    """Validates search attributes and memo and adds them to start_workflow's parameters.

    Non-empty search attributes also go into the ``WorkflowStarted`` data, so that the
    workflow sees them (``workflow.search_attributes()``) the same on every replay.
    """
    runs.set_visibility(params, check_search_attributes(search_attributes), check_memo(memo))
