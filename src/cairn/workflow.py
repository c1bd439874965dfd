"""The authoring API used inside workflow code.

A workflow is an ``async def`` decorated with :func:`defn`, or a class decorated with
:func:`defn` whose ``@workflow.run`` method is the entry point and whose ``@workflow.signal``,
``@workflow.query`` and ``@workflow.update`` methods are its handlers (Temporal's form; see
:mod:`cairn.handlers`). It runs on a deterministic event loop: use the helpers here (or plain
``asyncio``) for time, randomness, timers and activities, and keep I/O in activities.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random as _random
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn, ParamSpec, TypeVar, overload

from cairn.activity import validate_call
from cairn.engine.instance import ActivityHandle, ChildWorkflowHandle, WorkflowDefinition, WorkflowInfo
from cairn.engine.local import (
    DEFAULT_LOCAL_RETRY_THRESHOLD_SECONDS,
    LOCAL_ATTEMPT_MAX_SECONDS,
    LOCAL_BUDGET_SECONDS,
    LocalActivityHandle,
)
from cairn.engine.loop import WorkflowLoop, current_instance, unguarded
from cairn.errors import ContinueAsNewError, InputValidationError
from cairn.handlers import define_class, init, query, run, signal, update
from cairn.options import (
    ID_REUSE_POLICIES,
    PARENT_CLOSE_POLICIES,
    IdReusePolicy,
    ParentClosePolicy,
    Priority,
    RetryPolicy,
    as_priority,
    check_execution_timeout,
    check_identifier,
    check_policy,
    seconds,
)
from cairn.payloads import Signature, to_payload
from cairn.saga import Saga, current_saga
from cairn.visibility import check_search_attributes

__all__ = [
    "ActivityCancellationType", "ActivityHandle", "ChildWorkflowHandle", "WorkflowDefinition", "WorkflowInfo",
    "continue_as_new", "defn", "deprecate_patch", "execute_activity", "execute_child_workflow", "info", "logger",
    "now", "patched", "random", "saga", "search_attributes", "sleep", "start_activity", "start_child_workflow",
    "unsafe_is_replaying", "upsert_search_attributes", "uuid4", "wait",
]
# Local activities (their own section below).
__all__ += ["LocalActivityHandle", "execute_local_activity", "start_local_activity"]
# Messages: signals, wait conditions, queries (in their own section below).
__all__ += ["all_handlers_finished", "set_query_handler", "set_signal_handler", "set_update_handler", "wait_condition",
            "wait_signal"]
# Workflows as classes (cairn.handlers).
__all__ += ["init", "query", "run", "signal", "update"]

ActivityCancellationType = Literal["try_cancel", "wait_cancellation_completed", "abandon"]
"""What cancelling an activity's handle does (see :class:`ActivityHandle`)."""

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


@overload
def defn(fn: F, /) -> F: ...
@overload
def defn(*, name: str | None = None) -> Callable[[F], F]: ...
def defn(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Marks an ``async def``, or a class with one ``@workflow.run`` method, as a workflow;
    its type name defaults to the function's or the class's name.

    A class's run method carries the definition too, so ``client.start(MyWorkflow.run, ...)``
    and ``client.start(MyWorkflow, ...)`` are the same.
    """

    def wrap(f: F) -> F:
        if isinstance(f, type):
            d = define_class(f, name or f.__name__)
            f.__cairn_workflow__ = d  # type: ignore[attr-defined]
            run_method = next(v for k in f.__mro__ for v in vars(k).values() if getattr(v, "__cairn_run__", False))
            run_method.__cairn_workflow__ = d
            return f
        if not asyncio.iscoroutinefunction(f):
            raise TypeError(f"@workflow.defn needs an async def or a class, got {f!r}")
        f.__cairn_workflow__ = WorkflowDefinition(name or f.__name__, f, Signature(f))  # type: ignore[attr-defined]
        return f

    return wrap(fn) if fn is not None else wrap


def definition_of(fn: Any) -> WorkflowDefinition:
    """The definition behind a workflow function, class or class's run method."""
    d = getattr(fn, "__cairn_workflow__", None)
    if not isinstance(d, WorkflowDefinition):
        raise InputValidationError(f"{fn!r} is not a workflow: decorate it with @workflow.defn")
    return d


def in_workflow() -> bool:
    """Whether the caller runs inside workflow code."""
    try:
        return isinstance(asyncio.get_running_loop(), WorkflowLoop)
    except RuntimeError:
        return False


def info() -> WorkflowInfo:
    """The running workflow's id, run id, type and queue, its parent and predecessor runs,
    and ``history_length``: the seq of its last event so far (a long loop calls
    :func:`continue_as_new` when it grows too long)."""
    inst = current_instance()
    return dataclasses.replace(inst.info, history_length=inst.last_seq)


def now() -> datetime:
    """Workflow time: the time of the current workflow task, the same on every replay."""
    return current_instance().now()


def random() -> _random.Random:
    """A random generator seeded from the run id: the same values on every replay."""
    return current_instance().random


def uuid4() -> uuid.UUID:
    """A UUID from the workflow's seeded random generator."""
    return current_instance().uuid4()


def patched(patch_id: str) -> bool:
    """Whether to run the new code of a change made while runs were in flight.

    ``if workflow.patched("my-change"): new() else: old()``. A run that reaches this call
    for the first time under the new code records a ``MarkerRecorded {"kind": "patch"}``
    command and gets True; a run whose history was recorded by the old code, before the
    call existed, replays without the marker and gets False, so it keeps taking the old
    path. The answer is the same for every call with the same id in a run.

    Args:
        patch_id: names the change; unique within the workflow type.
    """
    if not isinstance(patch_id, str) or not patch_id:
        raise InputValidationError("workflow.patched needs a non-empty patch id")
    return current_instance().patched(patch_id)


def deprecate_patch(patch_id: str) -> None:
    """Marks a patch whose old code path is gone: every run still in flight took the new one.

    Replace ``if workflow.patched(id): new() else: old()`` by ``workflow.deprecate_patch(id);
    new()`` once no run can take the old path. It records the same patch marker (flagged
    ``deprecated``) but never fails a replay, whether the history has the marker or not;
    remove the call once no run that recorded the marker remains (a recorded patch marker
    that no call asks for is skipped on replay).
    """
    if not isinstance(patch_id, str) or not patch_id:
        raise InputValidationError("workflow.deprecate_patch needs a non-empty patch id")
    current_instance().patched(patch_id, deprecated=True)


def search_attributes() -> dict[str, Any]:
    """The run's search attributes: its start values plus its upserts so far (a copy).

    Datetimes appear in their stored form, ISO-8601 UTC text.
    """
    return dict(current_instance().search_attributes)


def upsert_search_attributes(values: dict[str, Any]) -> None:
    """Sets (or, with a ``None`` value, removes) search attributes of the running workflow.

    Recorded as an ``UpsertSearchAttributes`` event and applied to the run's row (what
    ``cairn list --where`` filters on) when the workflow task commits.

    Raises:
        InputValidationError: a bad name or value (see ``Client.start``).
    """
    inst = current_instance()
    checked = check_search_attributes(values, allow_null=True)
    if not checked:
        raise InputValidationError("upsert_search_attributes needs at least one attribute")
    inst.upsert_search_attributes(checked)


def unsafe_is_replaying() -> bool:
    """Whether the code is being replayed from history (for logging decisions only)."""
    return current_instance().replaying


async def sleep(duration: timedelta | float) -> None:
    """A durable timer: survives worker restarts. Plain ``asyncio.sleep`` does the same."""
    await asyncio.sleep(duration.total_seconds() if isinstance(duration, timedelta) else duration)


async def wait(fs: Iterable[Awaitable[R]], *, timeout: timedelta | float | None = None,
               return_when: str = asyncio.ALL_COMPLETED) -> tuple[list[asyncio.Future[R]], list[asyncio.Future[R]]]:
    """``asyncio.wait`` made deterministic (Temporal's ``workflow.wait``): the same rules
    (``FIRST_COMPLETED``, ``FIRST_EXCEPTION``, ``ALL_COMPLETED``; the timeout a durable
    timer; nothing is cancelled), but ``(done, pending)`` are lists in the order of ``fs``,
    where ``asyncio.wait``'s sets iterate in an order that may differ on replay. Coroutines
    are wrapped in tasks, in that order.

    Raises:
        ValueError: ``fs`` is empty, or ``return_when`` is not one of the three.
    """
    awaitables = list(fs)
    if not awaitables:
        raise ValueError("workflow.wait needs at least one future, task or coroutine")
    if return_when not in (asyncio.FIRST_COMPLETED, asyncio.FIRST_EXCEPTION, asyncio.ALL_COMPLETED):
        raise ValueError(f"invalid return_when: {return_when!r}")
    limit = seconds(timeout)
    futures = [asyncio.ensure_future(f) for f in awaitables]
    done, _ = await asyncio.wait(futures, timeout=limit, return_when=return_when)
    return [f for f in futures if f in done], [f for f in futures if f not in done]


@unguarded
def start_activity(
    activity: Callable[..., Any] | str,
    *args: Any,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    heartbeat_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    queue: str | None = None,
    cancellation_type: ActivityCancellationType = "try_cancel",
    throttle_budget: timedelta | float | None = None,
    priority: Priority | int | None = None,
    concurrency_key: str | None = None,
) -> ActivityHandle:
    """Schedules an activity and returns a handle (an awaitable future you may cancel).

    Args:
        activity: an ``@activity.defn`` function, or an activity type name.
        args: the activity's arguments; converted to JSON and recorded in history.
        start_to_close_timeout: the most one attempt may take.
        schedule_to_close_timeout: the most all attempts together may take.
        heartbeat_timeout: the most time between two heartbeats of a running attempt.
        retry_policy: how failed attempts are retried (default: unlimited, 1 s doubling).
        queue: the activity queue (default: the workflow's queue).
        cancellation_type: what cancelling the handle does: ``"try_cancel"`` (resolve with
            ``CancelledError`` at once, tell a running attempt), ``"wait_cancellation_completed"``
            (tell it, and resolve once it has stopped) or ``"abandon"`` (resolve at once, let
            it run on; its outcome is ignored). See :class:`ActivityHandle`.
        throttle_budget: the most time the activity may spend rescheduled by
            ``activity.Reschedule`` (throttles, open breakers, rate limits) without burning
            attempts (default 600 s); past it, it fails with ``ThrottleBudgetExhausted``.
        priority: a :class:`cairn.Priority` (or a level, 1 first to 5 last): its place in
            the activity queue; unset fields are the workflow's (``workflow.info().priority``).
        concurrency_key: at most the key's activity limit (``cairn limits set KEY N --kind
            activity``) of the key's activities are scheduled and not finished at once, across
            all workers; the others wait for a slot. Such an activity is never leased eagerly.
    """
    current_instance()
    call = validate_call(
        activity, args, start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout, heartbeat_timeout=heartbeat_timeout,
        retry_policy=retry_policy, queue=queue, cancellation_type=cancellation_type,
        throttle_budget=throttle_budget, priority=priority, concurrency_key=concurrency_key,
    )
    saga_id = current_saga.get()
    return call.start(None if saga_id is None else {"saga": saga_id})


def saga(*, parallel_compensation: bool = False, continue_on_error: bool = True) -> Saga:
    """A saga: ``async with workflow.saga() as saga:``, registering ``saga.compensate(...)``
    after (or before) each step; if the block raises or is cancelled, the compensations run
    as activities, newest first, then the error propagates. See :class:`cairn.saga.Saga`.

    Args:
        parallel_compensation: start every compensation at once instead of one by one.
        continue_on_error: run the remaining compensations after one fails for good
            (sequential mode; in parallel mode all run anyway); ``False`` stops at the first.
    """
    return Saga(parallel_compensation=parallel_compensation, continue_on_error=continue_on_error)


async def execute_activity(
    activity: Callable[..., Any] | str,
    *args: Any,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    heartbeat_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    queue: str | None = None,
    cancellation_type: ActivityCancellationType = "try_cancel",
    throttle_budget: timedelta | float | None = None,
    priority: Priority | int | None = None,
    concurrency_key: str | None = None,
) -> Any:
    """Runs an activity and returns its result (see :func:`start_activity`).

    Raises:
        ActivityError: the activity failed for good; ``.cause`` has its type and message.
    """
    return await start_activity(
        activity, *args, start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout, heartbeat_timeout=heartbeat_timeout,
        retry_policy=retry_policy, queue=queue, cancellation_type=cancellation_type,
        throttle_budget=throttle_budget, priority=priority, concurrency_key=concurrency_key,
    )


# ---------------------------------------------------------------- local activities


@unguarded
def start_local_activity(
    activity: Callable[..., Any] | str,
    *args: Any,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    local_retry_threshold: timedelta | float | None = None,
) -> LocalActivityHandle:
    """Starts a local activity: an ``@activity.defn`` function the worker runs itself, inside
    this workflow task, with no activity task and no queue round trip. Its outcome is
    recorded as a ``MarkerRecorded {kind: "local_activity"}`` event in the task's
    transaction, and replayed from it, never run again once recorded. It runs at least
    once: a worker that dies before the task commits leaves it to run again.

    Meant for short calls (an attempt may take at most 20 s: the task holds its claim
    meanwhile). The activity must be registered on the workers of the workflow's queue.

    Args:
        activity: an ``@activity.defn`` function, or an activity type name.
        args: the activity's arguments (JSON; recorded only in the marker's outcome).
        start_to_close_timeout: the most one attempt may take (at most 20 s).
        schedule_to_close_timeout: the most all attempts together may take, retries in
            later tasks included.
        retry_policy: how failed attempts are retried (default: unlimited, 1 s doubling).
        local_retry_threshold: a retry that must wait longer than this (default 1 s)
            waits for a durable timer and runs in a later workflow task.
    """
    inst = current_instance()
    call = validate_call(
        activity, args, start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout, heartbeat_timeout=None,
        retry_policy=retry_policy, queue=None,
    )
    options = call.options
    if retry_policy is not None and retry_policy.on_exhausted == "pause":
        raise InputValidationError(
            f"local activity {call.name}: on_exhausted='pause' needs an activity task to hold: "
            "use workflow.execute_activity")
    attempt_limit = options["start_to_close_timeout"] or options["schedule_to_close_timeout"]
    if attempt_limit > LOCAL_ATTEMPT_MAX_SECONDS:
        raise InputValidationError(
            f"local activity {call.name}: an attempt may take at most {LOCAL_ATTEMPT_MAX_SECONDS:g} s "
            f"(start_to_close_timeout, else schedule_to_close_timeout; got {attempt_limit:g} s): "
            "use workflow.execute_activity for longer calls")
    threshold: Any = DEFAULT_LOCAL_RETRY_THRESHOLD_SECONDS if local_retry_threshold is None \
        else local_retry_threshold.total_seconds() if isinstance(local_retry_threshold, timedelta) \
        else local_retry_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
            or not 0 <= threshold <= LOCAL_BUDGET_SECONDS:
        raise InputValidationError(
            f"local activity {call.name}: local_retry_threshold must be between 0 and "
            f"{LOCAL_BUDGET_SECONDS:g} seconds, got {local_retry_threshold!r}")
    options = {k: v for k, v in options.items() if k != "heartbeat_timeout"}
    options["local_retry_threshold"] = float(threshold)
    return inst.schedule_local_activity(call.name, call.args, options, call.returns)


async def execute_local_activity(
    activity: Callable[..., Any] | str,
    *args: Any,
    start_to_close_timeout: timedelta | float | None = None,
    schedule_to_close_timeout: timedelta | float | None = None,
    retry_policy: RetryPolicy | None = None,
    local_retry_threshold: timedelta | float | None = None,
) -> Any:
    """Runs a local activity and returns its result (see :func:`start_local_activity`).

    Raises:
        ActivityError: the activity failed for good; ``.cause`` has its type and message.
    """
    return await start_local_activity(
        activity, *args, start_to_close_timeout=start_to_close_timeout,
        schedule_to_close_timeout=schedule_to_close_timeout, retry_policy=retry_policy,
        local_retry_threshold=local_retry_threshold,
    )


class _WorkflowLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds the workflow and run id to each record; silent while replaying."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        if in_workflow():
            i = current_instance().info
            extra = dict(kwargs.get("extra") or {})
            extra.update(workflow_id=i.workflow_id, run_id=i.run_id, workflow_type=i.workflow_type)
            kwargs["extra"] = extra
        return msg, kwargs

    def isEnabledFor(self, level: int) -> bool:
        if in_workflow() and current_instance().replaying:
            return False
        return super().isEnabledFor(level)


logger = _WorkflowLogger(logging.getLogger("cairn.workflow"), {})
"""A logger for workflow code: quiet during replay, records carry workflow and run id."""


# ---------------------------------------------------------------- messages


def _message_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InputValidationError(f"a {what} name must be a non-empty string of at most 200 characters")
    return name


async def wait_signal(name: str, timeout: timedelta | float | None = None) -> Any:
    """Waits for the next signal called ``name`` and returns its payload (a signal sent
    with several arguments: their tuple).

    Signals that arrived before anyone waited are buffered in arrival order; each is
    consumed by exactly one ``wait_signal``. A signal whose name has a handler (see
    :func:`set_signal_handler`) goes to the handler instead.

    Args:
        name: the signal's name.
        timeout: give up after this long (a durable timer, like ``asyncio.wait_for``).

    Raises:
        TimeoutError: no signal of that name arrived within ``timeout``.
    """
    inst = current_instance()
    return await inst.messages.wait_signal(_message_name(name, "signal"), seconds(timeout))


def set_signal_handler(name: str, handler: Callable[..., Any] | None) -> None:
    """Routes signals called ``name`` to ``handler(*args)`` (``None`` removes it).

    The handler may be a plain function or an ``async def``; an async handler runs as a
    task on the workflow loop and may await activities and timers. Its annotations type
    the signal's arguments (a dataclass, a pydantic model ...); a signal whose arguments it
    cannot take is dropped with a warning, as Temporal does. Signals buffered before the
    handler was registered are delivered to it at once, in arrival order. An exception
    raised by a handler fails the run, like one from the workflow function.
    """
    if handler is not None and not callable(handler):
        raise InputValidationError(f"a signal handler must be callable, got {handler!r}")
    current_instance().messages.set_signal_handler(_message_name(name, "signal"), handler)


async def wait_condition(predicate: Callable[[], Any], timeout: timedelta | float | None = None) -> None:
    """Waits until ``predicate()`` returns true.

    The predicate is checked at once, then each time the workflow's code is blocked
    (after every batch of events, e.g. a signal handler changing state), conditions in
    the order they were registered. It must only read workflow state.

    Raises:
        TimeoutError: the predicate stayed false for ``timeout`` (a durable timer).
    """
    if not callable(predicate):
        raise InputValidationError(f"wait_condition needs a callable predicate, got {predicate!r}")
    await current_instance().messages.wait_condition(predicate, seconds(timeout))


def set_query_handler(name: str, handler: Callable[..., Any] | None) -> None:
    """Answers queries called ``name`` with ``handler(*args)`` (``None`` removes it).

    The handler is a plain (non-async) function returning a JSON-able value, its arguments
    typed by its annotations (arguments it cannot take fail the query); it must only
    read workflow state: scheduling an activity, starting a timer or any other command
    while answering fails the query and records nothing. Queries are answered by a
    worker that runs this workflow type (``client.query``, ``cairn query``).
    """
    if handler is not None and (not callable(handler) or asyncio.iscoroutinefunction(handler)):
        raise InputValidationError(f"a query handler must be a plain (non-async) function, got {handler!r}")
    current_instance().messages.set_query_handler(_message_name(name, "query"), handler)


def set_update_handler(name: str, handler: Callable[..., Any] | None,
                       validator: Callable[..., Any] | None = None) -> None:
    """Answers updates called ``name`` with ``handler(*args)`` (``None`` removes it).

    An update is a request that waits for its answer (``handle.execute_update``, ``cairn
    update``). ``validator(*args)``, if given, runs first on the workflow's current state,
    read-only like a query handler: raising rejects the update, which the caller gets as a
    ``WorkflowUpdateFailedError`` and which leaves nothing in history. An accepted update
    is recorded (``UpdateAccepted``) and its handler runs like a signal handler (a plain
    function or an ``async def`` that may await activities and timers); its return value
    (``UpdateCompleted``) or its exception goes back to the caller. An exception fails the
    update, not the run (a bug, such as a ``TypeError``, fails the workflow task).
    """
    if handler is not None and not callable(handler):
        raise InputValidationError(f"an update handler must be callable, got {handler!r}")
    if validator is not None and (not callable(validator) or asyncio.iscoroutinefunction(validator)):
        raise InputValidationError(f"an update validator must be a plain (non-async) function, got {validator!r}")
    current_instance().messages.set_update_handler(_message_name(name, "update"), handler, validator)


def all_handlers_finished() -> bool:
    """True when no signal or update handler is running: ``await
    workflow.wait_condition(workflow.all_handlers_finished)`` before returning lets every
    accepted update answer its caller (an update unfinished when the run closes fails)."""
    return current_instance().messages.all_handlers_finished()


# ---------------------------------------------------------------- the run lifecycle


@unguarded
def _workflow_call(workflow: Callable[..., Any] | str, args: tuple[Any, ...]
                   ) -> tuple[str, list[Any], Callable[[Any], Any] | None]:
    """A workflow invocation's type name, JSON arguments and result validator (a child's:
    validated and converted with the profile hook off, as an activity's)."""
    payload = [to_payload(a) for a in args]
    if isinstance(workflow, str):
        if not workflow:
            raise InputValidationError("the workflow type name must not be empty")
        return workflow, payload, None
    d = definition_of(workflow)
    d.signature.validate_args(payload, f"workflow {d.name}")

    def returns(data: Any) -> Any:
        return d.signature.validate_result(data, f"workflow {d.name}")

    return d.name, payload, returns


async def start_child_workflow(
    workflow: Callable[..., Any] | str,
    *args: Any,
    id: str | None = None,
    queue: str | None = None,
    parent_close_policy: ParentClosePolicy = "terminate",
    id_reuse_policy: IdReusePolicy = "allow_duplicate",
    execution_timeout: timedelta | float | None = None,
    priority: Priority | int | None = None,
) -> ChildWorkflowHandle:
    """Starts a child workflow run and returns its handle once it has started.

    The child has its own workflow id, run and history; it is created in the same
    transaction as this workflow task. Await the handle for its result; cancel the handle
    to ask the child to cancel.

    Args:
        workflow: an ``@workflow.defn`` function, or a workflow type name.
        args: the child's arguments; converted to JSON and recorded in history.
        id: the child's workflow id (default: ``<this workflow id>/<seq>``, deterministic).
        queue: the child's workflow queue (default: this workflow's queue).
        parent_close_policy: what happens to the child if this run closes first:
            ``"terminate"`` it, ``"request_cancel"`` it, or ``"abandon"`` it (leave it running).
        id_reuse_policy: as for :meth:`cairn.Client.start`.
        execution_timeout: the most the child's run (and its continue-as-new chain) may take.
        priority: the child's place in its queue; unset fields are this workflow's.

    Raises:
        ChildWorkflowError: the child could not start (``.cause.type`` is
            ``WorkflowAlreadyStarted`` or ``WorkflowIdReuseRefused``).
    """
    inst = current_instance()
    name, payload, returns = _workflow_call(workflow, args)
    if id is not None:
        check_identifier(id, "the child workflow id")
    options: dict[str, Any] = {
        "queue": queue or inst.info.queue,
        "parent_close_policy": check_policy(parent_close_policy, PARENT_CLOSE_POLICIES, "parent_close_policy"),
        "id_reuse_policy": check_policy(id_reuse_policy, ID_REUSE_POLICIES, "id_reuse_policy"),
        "execution_timeout": check_execution_timeout(seconds(execution_timeout)),
    }
    inherited = (as_priority(priority) or Priority()).inherit(inst.info.priority).to_json()
    if inherited:  # only when set: histories without it stay as they were
        options["priority"] = inherited
    handle = inst.start_child(name, id, payload, options, returns)
    try:
        await handle.started
    except asyncio.CancelledError:
        handle.cancel()
        raise
    return handle


async def execute_child_workflow(
    workflow: Callable[..., Any] | str,
    *args: Any,
    id: str | None = None,
    queue: str | None = None,
    parent_close_policy: ParentClosePolicy = "terminate",
    id_reuse_policy: IdReusePolicy = "allow_duplicate",
    execution_timeout: timedelta | float | None = None,
    priority: Priority | int | None = None,
) -> Any:
    """Starts a child workflow and returns its result (see :func:`start_child_workflow`).

    Raises:
        ChildWorkflowError: the child did not start, or failed, was cancelled, terminated
            or timed out; ``.cause`` has the type and message.
    """
    handle = await start_child_workflow(
        workflow, *args, id=id, queue=queue, parent_close_policy=parent_close_policy,
        id_reuse_policy=id_reuse_policy, execution_timeout=execution_timeout, priority=priority,
    )
    return await handle


def continue_as_new(*args: Any) -> NoReturn:
    """Closes this run as ``continued_as_new`` and starts a new run of the same workflow id,
    type and queue with ``args`` and an empty history.

    Raises :class:`~cairn.errors.ContinueAsNewError` (a ``BaseException``) to unwind the
    code; do not catch it. Pending activities and timers of this run are dropped; the
    execution timeout, the parent and the id carry over.
    """
    inst = current_instance()
    payload = [to_payload(a) for a in args]
    inst.definition.signature.validate_args(payload, f"workflow {inst.definition.name}")
    raise ContinueAsNewError(payload)


# Temporal's names for calling an activity that is a method (``MyActivities.fetch``): here
# the same calls as for a function.
execute_activity_method = execute_activity
start_activity_method = start_activity
execute_local_activity_method = execute_local_activity
start_local_activity_method = start_local_activity
__all__ += ["execute_activity_method", "execute_local_activity_method", "start_activity_method",
            "start_local_activity_method"]
