"""A handle on a workflow: wait for its result, inspect it, signal, query, cancel or terminate it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cairn.client import pauses
from cairn.client.checks import READ_RETRY_SECONDS, validate_id
from cairn.client.follow import StreamChunk, follow
from cairn.client.messages import (
    CHECK_SIGNAL,
    QUERY_RECHECK_SECONDS,
    QUERY_TIMEOUT_SECONDS,
    signal_data,
    validate_name,
    validate_timeout,
)
from cairn.client.updates import (
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
    check_update,
    value_of,
    wait_update,
)
from cairn.client.workers import unserved_entry
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.errors import (
    InputValidationError,
    QueryFailed,
    QueryTimeout,
    WorkflowCancelled,
    WorkflowClosed,
    WorkflowFailure,
    WorkflowNotFound,
    WorkflowTerminated,
    WorkflowTimedOutError,
    WorkflowTimeout,
)
from cairn.handlers import check_message_args, message_ref
from cairn.options import Priority, seconds
from cairn.payloads import Signature, to_payload
from cairn.store import lifecycle, messages, runs
from cairn.views import describe_sagas, llm_calls, llm_totals

if TYPE_CHECKING:
    from cairn.client.client import Client


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
    # Work no live worker serves (an open run's workflow type, a pending activity's type, on
    # its queue): it waits for one. Each {"kind": "workflow"|"activity", "type", "queue",
    # "message", "last_worker", "last_heartbeat"} (the worker that served it last, if known).
    unserved: list[dict[str, Any]] = field(default_factory=list)
    # The run's pause ({"note", "by", "at"}) while it is paused (handle.pause()); a pending
    # activity's own pause is its "pause" ({"reason": "operator" | "exhausted", ...}), and
    # "paused" says it is held (by its own pause or the run's).
    paused: dict[str, Any] | None = None
    # Where the run's tasks go in their queue, as started (None: the default, priority 3,
    # no fairness key); its concurrency key, and whether it waits for one of the key's
    # slots (created, not started). A pending activity shows its own ``priority``,
    # ``fairness_key``, ``concurrency_key`` and ``waiting_for_slot``.
    priority: Priority | None = None
    concurrency_key: str | None = None
    waiting_for_slot: bool = False

    @property
    def saga(self) -> dict[str, Any] | None:
        """The run's latest saga (see :func:`cairn.views.describe_sagas`), if it has one."""
        return self.sagas[-1] if self.sagas else None

    def to_json(self) -> dict[str, Any]:
        return to_payload(self.__dict__, store=False)  # type: ignore[no-any-return]



class WorkflowHandle:
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

    async def _resolve(self, *, wait: float | None = READ_RETRY_SECONDS) -> runs.Run:
        """The run a call acts on: the pinned run, else the workflow id's newest run."""
        row = await self.client._run_row(self.workflow_id, self.run_id if self._pinned else None, wait=wait)
        self.run_id = row.run_id
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

        listener = self.client.listener
        await listener.ensure(remaining())
        run_id = self._result_run or (await self._resolve(wait=remaining())).run_id
        # A run this client started while listening, with no close seen yet, is open: skip
        # the first read (one statement fewer per start-and-wait). A pass after a close
        # NOTIFY that carried the outcome uses it; every other pass reads.
        known_open = listener.known_open(run_id)
        notified = listener.seen_outcome(run_id)  # a close NOTIFY carries the outcome
        while True:
            with listener.waiter(run_id) as closed:
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
                        listener.watched.pop(run_id, None)
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
        successor = await self.client._read(lambda c: runs.successor(c, run_id), wait=wait)
        if successor is None:
            raise WorkflowNotFound(f"run {run_id} of {self.workflow_id!r} continued as new, "
                                   "but its next run is missing")
        return successor

    async def _outcome_row(self, run_id: str, *, wait: float | None = READ_RETRY_SECONDS) -> dict[str, Any]:
        """The run's status and, once closed, its last event, in one query."""
        row = await self.client._read(
            lambda c: runs.outcome(c, self.client.namespace, self.workflow_id, run_id), wait=wait)
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
        err = WorkflowFailure(
            f"workflow {self.workflow_id!r} failed: {failure.get('type')}: {failure.get('message')}",
            type=str(failure.get("type") or "WorkflowFailed"), details=failure,
        )
        # Temporal's chain: the run's failure, caused by what it raised (an ActivityError's
        # own cause, the activity's error, under it).
        err.cause = err.__cause__ = WorkflowFailure.from_failure(failure) if failure else None
        raise err

    async def describe(self) -> RunDescription:
        """The run's status, pending activities, timers and workflow-task failures, and the
        work no live worker serves (``unserved``)."""
        row = await self._resolve()
        got = await self.client._read(lambda c: runs.details(c, row.run_id, row.namespace))
        links = got.links
        parent = None
        if links.get("parent_run_id") is not None:
            parent = {"workflow_id": links["parent_workflow_id"], "run_id": str(links["parent_run_id"]),
                      "seq": links["parent_seq"], "parent_close_policy": links["parent_close_policy"]}
        llm = llm_calls(got.llm_completions)
        return RunDescription(
            workflow_id=row.workflow_id, run_id=row.run_id, workflow_type=row.workflow_type,
            queue=row.queue, status=row.status, created_at=row.created_at,
            closed_at=row.closed_at, failure=row.failure,
            history_length=got.last_seq,
            pending_activities=got.activities, pending_timers=got.timers, workflow_task=got.task,
            sagas=describe_sagas(got.saga_events),
            search_attributes=got.visibility.get("search_attributes") or {}, memo=got.visibility.get("memo"),
            reset_from=got.visibility.get("reset_from"),
            parent=parent,
            continued_from=str(links["continued_from"]) if links.get("continued_from") else None,
            continued_to=str(links["continued_to"]) if links.get("continued_to") else None,
            execution_deadline=links.get("execution_deadline"), children=links.get("children") or [],
            llm_calls=llm, llm_totals=llm_totals(llm) if llm else None,
            unserved=[unserved_entry(u) for u in got.unserved],
            paused=pauses.run_pause(got.task),
            priority=Priority.from_json({"priority_key": links.get("priority"),
                                         "fairness_key": links.get("fairness_key"),
                                         "fairness_weight": links.get("fairness_weight")}
                                        if links.get("priority") is not None or links.get("fairness_key") else None),
            concurrency_key=links.get("concurrency_key"),
            waiting_for_slot=bool(got.task and got.task.get("waiting_for_slot")),
        )

    async def history(self, after: int = 0) -> list[Event]:
        """The run's history events (after seq ``after``)."""
        row = await self._resolve()
        return await self.client._read(lambda c: runs.history_after(c, row.run_id, after))

    async def stream(self, activity_seq: int | None = None) -> AsyncIterator[StreamChunk]:
        """Follows the tokens of the run's LLM calls (``chat(..., stream=True)``) as they
        arrive: :class:`~cairn.client.follow.StreamChunk` ``(attempt, text, activity_seq,
        restart)``. A retried attempt starts over with a ``restart`` chunk (its text is never
        appended to the failed attempt's). Ends when the run closes, or when the activity
        ``activity_seq`` (if given) has its outcome recorded."""
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
            if row.status != "running" or row.run_id in tried:
                raise WorkflowClosed(self.workflow_id, row.run_id,
                                     "closed" if row.status == "running" else row.status, what)
            if own_chain and not await self._in_own_chain(row.run_id):
                raise WorkflowClosed(self.workflow_id, str(self._first_run), "closed", what)
            if await act(row.run_id):
                return
            tried.add(row.run_id)

    async def _in_own_chain(self, run_id: str) -> bool:
        """Whether ``run_id`` is the run this handle started or comes from it (always true
        for a handle that started none)."""
        first = self._first_run
        if first is None or run_id == first:
            return True
        return await self.client._read(lambda c: runs.in_chain(c, self.client.namespace, self.workflow_id,
                                                               run_id, first))

    async def _write_input(self, run_id: str, event_type: str, data: dict[str, Any], *,
                           what: str, check: str) -> bool:
        """Writes an input event into the run's inbox; False if the run is closed."""
        return await self.client._write(lambda c: messages.write_input(c, run_id, event_type, data),
                                        what=what, check=check)

    async def terminate(self, reason: str = "") -> None:
        """Ends the run at once, without running any more workflow code.

        Takes the run's workflow-task lock (waiting for a worker mid-task), so the
        ``WorkflowTerminated`` event is appended by the one writer the run has.
        """
        await self._on_open_run("a terminate request", lambda run_id: self._terminate(run_id, reason),
                                own_chain=True)

    async def _terminate(self, run_id: str, reason: str) -> bool:
        return await self.client._write(
            lambda c: lifecycle.terminate(c, run_id, reason), what=f"terminating workflow {self.workflow_id!r}",
            check=f"see its status with `cairn describe {self.workflow_id}` (or handle.describe())")

    # -- pause and resume (cairn.client.pauses)

    async def pause(self, note: str = "") -> None:
        """Pauses the run: its workflow tasks are not claimed and its activities not started
        until :meth:`unpause` (attempts running finish; signals, updates, timers and
        outcomes wait in its inbox; queries are answered). Waits for a worker mid-task.
        A paused run keeps its first pause.

        Raises:
            WorkflowClosed: the run is closed; nothing was written.
        """
        await pauses.pause_run(self, note)

    async def unpause(self) -> bool:
        """Resumes the paused run: its work can be claimed at once. False if it was not paused."""
        return bool((await pauses.unpause_run(self))["was_paused"])

    async def pause_activity(self, seq: int, note: str = "") -> None:
        """Pauses the run's pending activity ``seq``: no new attempt starts (one running goes
        on) until :meth:`unpause_activity`, as ``temporal activity pause``.

        Raises:
            InputValidationError: no pending activity ``seq``; nothing was written.
        """
        await pauses.pause_activity(self, seq, note)

    async def unpause_activity(self, seq: int, *, reset_attempts: bool = False) -> bool:
        """Lifts activity ``seq``'s pause: its next attempt is due at once. Its attempt count
        is kept unless ``reset_attempts``, or unless its retry policy paused it (its attempts
        or throttle budget ran out: then it gets a fresh set). False if it was not paused."""
        return bool((await pauses.unpause_activity(self, seq, reset_attempts))["was_paused"])

    async def fail_activity(self, seq: int, message: str = "failed by an operator", *,
                            type: str = "ActivityFailedByOperator", details: Any = None) -> None:
        """Fails pending activity ``seq`` for good (``ActivityError`` in the workflow), a
        paused one typically; an attempt still running is superseded."""
        await pauses.fail_activity(self, seq, message, type, details)

    # -- messages (the checks and limits: cairn.client.messages)

    async def signal(self, signal: str | Callable[..., Any], *args: Any) -> None:
        """Sends a signal with ``args`` to the run.

        ``signal`` is the signal's name, or a workflow class's ``@workflow.signal`` method,
        whose annotations then check the arguments. The arguments are converted to JSON and
        checked before anything is written. The run's code receives them through its
        handler (``@workflow.signal``, ``workflow.set_signal_handler(name, ...)``) or
        ``workflow.wait_signal(name)`` (one argument as it is, several as a tuple).

        Raises:
            InputValidationError: a bad name or an argument with no JSON form (NaN, NUL...)
                or that the handler method cannot take.
            WorkflowNotFound: no such workflow.
            WorkflowClosed: the run is closed (``.status`` says how).
            OutcomeUnknown: the connection was lost while the signal was on its way: it may
                have been delivered (its ``SignalReceived`` event shows in the history).
        """
        name, data = signal_data(signal, args)
        validate_id(self.workflow_id)
        await self._on_open_run("a signal", lambda run_id: self._write_input(
            run_id, h.SIGNAL_RECEIVED, data, what=f"sending signal {name!r} to workflow {self.workflow_id!r}",
            check=CHECK_SIGNAL.format(workflow_id=self.workflow_id)))

    async def execute_update(self, update: str | Callable[..., Any], *args: Any, id: str | None = None,
                             timeout: float | None = None, result_type: Any = None) -> Any:
        """Sends an update with ``args`` to the run and returns its handler's result.

        ``update`` is the update's name, or a workflow class's ``@workflow.update`` method,
        whose annotations then check the arguments and type the result.

        The run's validator (if any) runs first: a rejection writes nothing to history.
        ``id`` (default: a new UUID) makes the request idempotent: an update id the run
        has already seen is not applied again, and its outcome is returned. ``result_type``
        (a dataclass, a pydantic model, an enum ...) types the JSON result.

        Raises:
            InputValidationError: a bad name, id or argument; nothing was written.
            WorkflowNotFound: no such workflow.
            WorkflowClosed: the run is closed.
            WorkflowUpdateFailedError: rejected (``.rejected``), the handler raised
                (``.type``, ``.message``, ``.cause``), or the run closed first.
            WorkflowUpdateTimeout: no outcome within ``timeout`` seconds.
        """
        sent = await self.start_update(update, *args, id=id, wait_for_stage=WorkflowUpdateStage.COMPLETED,
                                       timeout=timeout, result_type=result_type)
        return await sent.result()

    async def start_update(self, update: str | Callable[..., Any], *args: Any, id: str | None = None,
                           wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.ACCEPTED,
                           timeout: float | None = None, result_type: Any = None) -> WorkflowUpdateHandle:
        """Sends update ``name`` and waits until it reaches ``wait_for_stage`` (by default
        ``ACCEPTED``: validated and recorded); ``.result()`` on the returned handle waits for
        the handler. Raises as :meth:`execute_update` (a rejection, here)."""
        name, payload, update_id, returns = check_update(update, args, id)
        if not isinstance(wait_for_stage, WorkflowUpdateStage):
            raise InputValidationError(f"wait_for_stage must be a WorkflowUpdateStage, got {wait_for_stage!r}")
        timeout = seconds(timeout)
        validate_id(self.workflow_id)
        client = self.client
        sent: list[str] = []

        async def send(run_id: str) -> bool:
            # Idempotent by the update id: safe to repeat after a lost connection.
            is_open, _ = await client._read(lambda c: messages.request_update(
                c, run_id=run_id, update_id=update_id, name=name, args=payload))
            if is_open:
                sent.append(run_id)
            return is_open

        await self._on_open_run(f"update {name!r}", send)
        return await self._await_stage(sent[0], update_id, name, wait_for_stage, timeout, result_type, returns)

    async def _await_stage(self, run_id: str, update_id: str, name: str, stage: WorkflowUpdateStage,
                           timeout: float | None, result_type: Any = None,
                           returns: Signature | None = None) -> WorkflowUpdateHandle:
        outcome = await wait_update(self.client, run_id, update_id, stage, timeout, self.workflow_id)
        if outcome.status == "rejected":
            value_of(outcome, self.workflow_id, update_id)  # raises
        return WorkflowUpdateHandle(self.client, workflow_id=self.workflow_id, run_id=run_id, update_id=update_id,
                                    name=name, outcome=outcome, workflow_handle=self, result_type=result_type,
                                    returns=returns)

    def get_update_handle(self, update_id: str, *, result_type: Any = None) -> WorkflowUpdateHandle:
        """A handle on an update sent earlier (to the run this handle acts on: pin its run id)."""
        if self.run_id is None:
            raise InputValidationError("get_update_handle needs the run id: use client.get_handle(id, run_id=...)")
        return WorkflowUpdateHandle(self.client, workflow_id=self.workflow_id, run_id=self.run_id,
                                    update_id=update_id, name="", workflow_handle=self, result_type=result_type)

    async def query(self, query: str | Callable[..., Any], *args: Any, timeout: float = QUERY_TIMEOUT_SECONDS) -> Any:
        """Asks the run's query handler and returns its answer.

        ``query`` is the query's name, or a workflow class's ``@workflow.query`` method,
        whose annotations then check the arguments and type the answer.

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
        name, signature = message_ref(query, "query")
        name = validate_name(name, "query")
        payload = [to_payload(a) for a in args]
        check_message_args(signature, payload, f"query {name!r}")
        timeout = validate_timeout(timeout)
        validate_id(self.workflow_id)
        client = self.client
        row = await self._resolve()
        await client.listener.ensure()
        request_id = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        inserted = False
        try:
            while True:
                # A fresh waiter each round, registered before the insert or the read, so an
                # answer in between is not missed (a waiter woken by a listener reconnect
                # just means: read again).
                with client.listener.waiter(request_id) as answered:
                    if not inserted:
                        # The request id is chosen here: a request found under it after a lost
                        # connection is this one, and asking again is safe.
                        await client._read(lambda c: messages.insert_query_request(
                            c, request_id=request_id, run_id=row.run_id, queue=row.queue,
                            namespace=row.namespace or client.namespace, workflow_type=row.workflow_type,
                            name=name, args=payload))
                        inserted = True
                        got = None
                    else:
                        got = await client._read(lambda c: messages.query_answer(c, request_id))
                    if got is not None:
                        break
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise QueryTimeout(await self._query_timeout_message(row, name, timeout))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(answered, min(remaining, QUERY_RECHECK_SECONDS))
        finally:
            if inserted:
                with contextlib.suppress(Exception):
                    async with client.pool.connection() as c:
                        await messages.delete_query_request(c, request_id)
        if got.error is not None:
            error = got.error
            raise QueryFailed(str(error.get("message")), type=str(error.get("type") or "QueryFailed"))
        if signature is not None:
            return signature.validate_result(got.answer, f"query {name!r}")
        return got.answer

    async def _query_timeout_message(self, row: runs.Run, name: str, timeout: float) -> str:
        """Why a query got no answer: no worker, or (the request waits for it) no first workflow task."""
        said = f"no worker answered query {name!r} on workflow {row.workflow_id!r} within {timeout:g} s: "
        ask = f"is a worker running for queue {row.queue!r} with workflow type {row.workflow_type!r}"
        last = await self.client._read(lambda c: runs.last_seq(c, row.run_id))
        if row.status == "running" and last == 1:
            return (f"{said}its run {row.run_id} has not completed its first workflow task, which a query "
                    f"waits for: {ask}, and is that task failing (cairn describe)?")
        return f"{said}{ask}?"
