"""The client side of messages: signals, signal-with-start and queries.

Mixed into :class:`cairn.client.Client` and :class:`cairn.client.WorkflowHandle`, so that
the message API lives in one module. A signal is a ``SignalReceived`` event in the run's
inbox (``signal_run``); a query is a row in ``cairn.query_requests`` that a worker serving
the run's queue answers (see ARCHITECTURE.md, "Messages").
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn.engine import history as h
from cairn.errors import InputValidationError, QueryFailed, QueryTimeout
from cairn.options import check_text, shown
from cairn.payloads import to_payload
from cairn.store.sql import q
from cairn.telemetry import tracer

if TYPE_CHECKING:
    from cairn.client import Client, WorkflowHandle

QUERY_TIMEOUT_SECONDS = 10.0  # how long client.query waits for a worker's answer by default
QUERY_RECHECK_SECONDS = 1.0   # re-read the answer this often, in case a NOTIFY was missed
MAX_NAME_LENGTH = 200         # signal and query names
_CHECK_SIGNAL = ("look for it in `cairn history {workflow_id}` (or handle.history()) before sending it again; "
                 "a workflow that must see a signal once should dedupe it by a key in its payload")


def validate_name(name: str, what: str) -> str:
    """A signal or query name: non-empty text of at most 200 characters that Postgres can store."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        got = shown(name) if isinstance(name, str) else repr(name)
        raise InputValidationError(f"the {what} name must be a non-empty string of at most "
                                   f"{MAX_NAME_LENGTH} characters, got {got}")
    return check_text(name, f"the {what} name")


def _validate_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or not timeout > 0:
        raise InputValidationError(f"the query timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class HandleMessages:
    """Signals and queries on one workflow run (mixed into ``WorkflowHandle``)."""

    async def signal(self, name: str, payload: Any = None) -> None:
        """Sends signal ``name`` with ``payload`` to the run.

        The payload is converted to JSON and checked before anything is written. The
        run's code receives it through ``workflow.wait_signal(name)`` or the handler set
        with ``workflow.set_signal_handler(name, ...)``.

        Raises:
            InputValidationError: a bad name or a payload with no JSON form (NaN, NUL...).
            WorkflowNotFound: no such workflow.
            WorkflowClosed: the run is closed (``.status`` says how).
            OutcomeUnknown: the connection was lost while the signal was on its way: it may
                have been delivered (its ``SignalReceived`` event shows in the history).
        """
        handle = cast("WorkflowHandle", self)
        data = {"name": validate_name(name, "signal"), "payload": to_payload(payload)}
        _validate_workflow_id(handle.workflow_id)
        await handle._on_open_run("a signal", lambda run_id: handle._write_input(
            run_id, h.SIGNAL_RECEIVED, data, what=f"sending signal {name!r} to workflow {handle.workflow_id!r}",
            check=_CHECK_SIGNAL.format(workflow_id=handle.workflow_id)))

    async def query(self, name: str, *args: Any, timeout: float = QUERY_TIMEOUT_SECONDS) -> Any:
        """Asks the run's query handler ``name`` and returns its answer.

        A worker that serves the run's queue and workflow type answers it, from its live
        instance or by replaying the history (closed runs can be queried too). A query to
        an open run whose first workflow task has not run yet waits for that task (within
        ``timeout``), as the handlers are registered by it.

        Raises:
            InputValidationError: a bad name, arguments or timeout.
            WorkflowNotFound: no such workflow.
            QueryFailed: no handler of that name (``.type == "UnknownQuery"``), or the
                handler raised (``.type`` is its exception's type).
            QueryTimeout: no worker answered within ``timeout`` seconds.
        """
        handle = cast("WorkflowHandle", self)
        name = validate_name(name, "query")
        payload = [to_payload(a) for a in args]
        timeout = _validate_timeout(timeout)
        _validate_workflow_id(handle.workflow_id)
        client = handle.client
        row = await handle._resolve()
        await client._ensure_listener()
        request_id = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        inserted = False
        try:
            while True:
                # A fresh waiter each round, registered before the insert or the read, so an
                # answer in between is not missed (a waiter woken by a listener reconnect
                # just means: read again).
                with client._close_waiter(request_id) as answered:
                    if not inserted:
                        # The request id is chosen here: a request found under it after a lost
                        # connection is this one, and asking again is safe.
                        await client._read(lambda c: _insert_query_request(c, {
                            "id": request_id, "run_id": row["run_id"], "queue": row["queue"],
                            "namespace": row.get("namespace") or client.namespace,
                            "workflow_type": row["workflow_type"], "name": name, "args": Jsonb(payload),
                            "now": None}))
                        inserted = True
                        got = None
                    else:
                        got = await client._read(lambda c: _query_answer(c, request_id))
                    if got is not None:
                        break
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise QueryTimeout(await _timeout_message(client, row, name, timeout))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(answered, min(remaining, QUERY_RECHECK_SECONDS))
        finally:
            if inserted:
                with contextlib.suppress(Exception):
                    async with client.pool.connection() as c:
                        await c.execute(q("delete_query_request"), {"id": request_id})
        if got["error"] is not None:
            error = got["error"]
            raise QueryFailed(str(error.get("message")), type=str(error.get("type") or "QueryFailed"))
        return got["answer"]


async def _timeout_message(client: Client, row: dict[str, Any], name: str, timeout: float) -> str:
    """Why a query got no answer: no worker, or (the request waits for it) no first workflow task."""
    said = f"no worker answered query {name!r} on workflow {row['workflow_id']!r} within {timeout:g} s: "
    ask = f"is a worker running for queue {row['queue']!r} with workflow type {row['workflow_type']!r}"
    async with client.pool.connection() as c:
        last = await (await c.execute(q("last_history_event"), {"run_id": row["run_id"]})).fetchone()
    if row["status"] == "running" and last is not None and last[0] == 1:
        return (f"{said}its run {row['run_id']} has not completed its first workflow task, which a query "
                f"waits for: {ask}, and is that task failing (cairn describe)?")
    return f"{said}{ask}?"


class ClientMessages:
    """Signals, signal-with-start and queries by workflow id (mixed into ``Client``)."""

    async def signal(self, workflow_id: str, name: str, payload: Any = None, *, run_id: str | None = None) -> None:
        """Sends a signal to a workflow's open run (see :meth:`WorkflowHandle.signal`)."""
        client = cast("Client", self)
        await client.get_handle(_validate_workflow_id(workflow_id), run_id).signal(name, payload)

    async def query(self, workflow_id: str, name: str, *args: Any, run_id: str | None = None,
                    timeout: float = QUERY_TIMEOUT_SECONDS) -> Any:
        """Queries a workflow's newest run (see :meth:`WorkflowHandle.query`)."""
        client = cast("Client", self)
        return await client.get_handle(_validate_workflow_id(workflow_id), run_id).query(name, *args, timeout=timeout)

    async def signal_with_start(self, workflow: Callable[..., Any] | str, *args: Any, id: str, signal: str,
                                signal_payload: Any = None, queue: str | None = None) -> WorkflowHandle:
        """Signals the open run of workflow ``id``, starting one first if none is open.

        Start and signal are one transaction: a new run finds the signal in its first
        workflow task's inbox, and two concurrent calls produce one run with both signals.

        Args:
            workflow: an ``@workflow.defn`` function, or a registered workflow type name.
            args: the workflow's arguments (used only if a run is started).
            id: the workflow id.
            signal: the signal's name.
            signal_payload: the signal's payload.
            queue: the queue of a started run (default: as :meth:`cairn.Client.start`).

        Returns:
            A handle on the run that received the signal.

        Raises:
            InputValidationError: bad arguments, id, queue, signal name or payload;
                nothing was written.
        """
        from cairn.client import WorkflowHandle

        client = cast("Client", self)
        data = Jsonb({"name": validate_name(signal, "signal"), "payload": to_payload(signal_payload)})
        with tracer.start_as_current_span("cairn.signal_with_start") as span:  # the new run's trace root
            params, signature = await client._start_params(workflow, args, _validate_workflow_id(id), queue,
                                                           "use_existing")
            span.set_attributes({"cairn.workflow_id": params["workflow_id"],
                                 "cairn.workflow_type": params["workflow_type"], "cairn.signal": signal})
            async def write(c: psycopg.AsyncConnection[Any]) -> str:
                async with c.transaction():
                    return await _signal_with_start_on(c, params, data)

            run_id = await client._write(write, what=f"signalling (and maybe starting) workflow {id!r}",
                                         check=_CHECK_SIGNAL.format(workflow_id=id))
            span.set_attribute("cairn.run_id", run_id)
        return WorkflowHandle(client, params["workflow_id"], run_id, signature)


async def _insert_query_request(c: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> None:
    # A UniqueViolation: an earlier try of this request, whose connection was lost, had inserted it.
    with contextlib.suppress(psycopg.errors.UniqueViolation):
        await c.execute(q("insert_query_request"), params)


async def _query_answer(c: psycopg.AsyncConnection[Any], request_id: str) -> dict[str, Any] | None:
    cur = c.cursor(row_factory=dict_row)
    return await (await cur.execute(q("query_request_answer"), {"id": request_id})).fetchone()


async def _signal_with_start_on(c: psycopg.AsyncConnection[Any], params: dict[str, Any], data: Jsonb) -> str:
    """Starts the run unless one is open, and signals the open (or new) run; in the
    caller's transaction. A concurrent start of the same id makes ``start_workflow`` wait
    for it (the unique index) and then insert nothing: the next statement sees that run."""
    while True:
        row = await (await c.execute(q("start_workflow"), params)).fetchone()
        if row is not None:
            run_id = str(row[0])
        else:
            existing = await (await c.execute(q("open_run_by_workflow_id"), params)).fetchone()
            if existing is None:
                continue  # the open run closed between the two statements: start anew
            run_id = str(existing[0])
        sent = await (await c.execute(q("signal_run"), {"run_id": run_id, "type": h.SIGNAL_RECEIVED,
                                                        "data": data})).fetchone()
        if sent is not None:
            return run_id
        # The open run closed before the signal reached it: start a new one.


def _validate_workflow_id(workflow_id: str) -> str:
    from cairn.client import _validate_id

    return _validate_id(workflow_id)
