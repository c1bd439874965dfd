"""Messages of one workflow instance: signals, wait conditions and queries.

Signals arrive as ``SignalReceived`` input events, so replay delivers them in the same
batches, in the same order, as the live run saw them. A signal whose name has a handler
goes to the handler (run as a task on the workflow loop); otherwise it is buffered, in
arrival order, until a :meth:`Messages.wait_signal` takes it. A signal carries a list of
arguments (``{"args": [...]}``; one argument is recorded as ``{"payload": value}``, the form
every earlier history has), typed by the handler's annotations: arguments a typed handler
cannot take drop the signal with a warning, as Temporal does. Wait conditions are checked
whenever the code is blocked, in registration order, until none changes. Queries run a
read-only handler against the instance's state and record nothing.

Updates: a validator runs read-only, like a query, before the update is recorded
(:meth:`Messages.validate_update`; the worker calls it on the inbox's ``UpdateRequested``);
an accepted update arrives as an ``UpdateAccepted`` input event and its handler runs as a
task, like a signal handler's, whose return value or exception the instance records as
``UpdateCompleted``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cairn.engine import history as h
from cairn.engine.loop import _IN_WORKFLOW
from cairn.errors import (
    ConfigurationError,
    DeterminismViolation,
    InputValidationError,
    QueryFailed,
    WorkflowFailure,
)
from cairn.payloads import Signature, to_payload
from cairn.redaction import redact_value

if TYPE_CHECKING:
    from cairn.engine.instance import WorkflowInstance

SignalHandler = Callable[..., Any]
QueryHandler = Callable[..., Any]
UpdateHandler = Callable[..., Any]
log = logging.getLogger("cairn.workflow")
# Rounds of "check conditions, run the code they woke" per activation before the code is
# declared stuck: each round resolves at least one condition, so only a loop that keeps
# creating conditions that are true at once gets here.
MAX_CONDITION_ROUNDS = 10_000


class _Condition:
    """One ``wait_condition`` call: its predicate and the future that resolves it."""

    __slots__ = ("future", "predicate")

    def __init__(self, predicate: Callable[[], Any], future: asyncio.Future[None]) -> None:
        self.predicate = predicate
        self.future = future


class Messages:
    """The signal buffer, handlers and conditions of one :class:`WorkflowInstance`."""

    def __init__(self, instance: WorkflowInstance) -> None:
        self._instance = instance
        self.buffered: dict[str, deque[list[Any]]] = {}  # name -> the arguments of each signal not yet taken
        # name -> (handler, its typed parameters or None when it has no signature to check)
        self.signal_handlers: dict[str, tuple[SignalHandler, Signature | None]] = {}
        self.query_handlers: dict[str, tuple[QueryHandler, Signature | None]] = {}
        self._signal_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._conditions: list[_Condition] = []
        self._resolved = False
        # The first exception a signal handler raised: it fails the run (or, if it is a
        # bug, the workflow task), like an exception of the main coroutine.
        self.handler_error: BaseException | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self.querying = False  # a query handler (or an update validator) runs: commands are refused
        # name -> (handler, validator or None, the handler's typed parameters or None)
        self.update_handlers: dict[str, tuple[UpdateHandler, UpdateHandler | None, Signature | None]] = {}
        # Accepted updates whose handler was removed since: (update_id, args) by name, in order.
        self._buffered_updates: dict[str, deque[tuple[str, list[Any]]]] = {}
        self._update_tasks: set[asyncio.Task[None]] = set()

    # -- signals

    def deliver(self, name: str, args: list[Any]) -> None:
        """A ``SignalReceived`` event's arguments: to its handler, else into the buffer."""
        entry = self.signal_handlers.get(name)
        if entry is not None:
            self._start_handler(name, entry, args)
            return
        self.buffered.setdefault(name, deque()).append(args)
        for fut in self._signal_waiters.pop(name, []):
            if not fut.done():
                fut.set_result(None)

    def set_signal_handler(self, name: str, handler: SignalHandler | None) -> None:
        """Registers (or, with ``None``, removes) a handler; buffered signals go to it now."""
        if handler is None:
            self.signal_handlers.pop(name, None)
            return
        entry = self.signal_handlers[name] = (handler, signature_of(handler))
        for args in self.buffered.pop(name, ()):
            self._start_handler(name, entry, args)

    def _start_handler(self, name: str, entry: tuple[SignalHandler, Signature | None], args: list[Any]) -> None:
        handler, signature = entry
        typed, why = _typed_args(signature, args, f"signal {name!r}")
        if typed is None:
            if not self._instance.replaying:
                log.warning("workflow %s (run %s): signal %r dropped: its handler cannot take arguments %s",
                            self._instance.info.workflow_id, self._instance.info.run_id, name,
                            why)
            return
        task = self._instance.loop.create_task(_call_handler(handler, typed), name=f"signal handler {name}")
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.handler_error is None:
            self.handler_error = task.exception()

    async def wait_signal(self, name: str, timeout: float | None) -> Any:
        """The next buffered payload of signal ``name``, waiting for one if needed.

        The payload leaves the buffer only in the waiting coroutine's own step, so a
        timeout that fires in the same batch as the signal leaves the signal buffered for
        the next wait instead of losing it.
        """
        def pop() -> Any:
            queue = self.buffered[name]
            args = queue.popleft()
            if not queue:
                del self.buffered[name]
            return args[0] if len(args) == 1 else tuple(args) if args else None

        async def take() -> Any:
            while not self.buffered.get(name):
                fut = self._instance.loop.create_future()
                waiters = self._signal_waiters.setdefault(name, [])
                waiters.append(fut)
                try:
                    await fut
                finally:
                    if fut in waiters:
                        waiters.remove(fut)
            return pop()

        if self.buffered.get(name):  # already here: no timer to start and cancel
            return pop()
        if timeout is None:
            return await take()
        async with asyncio.timeout(timeout):  # a durable timer, through the loop's call_later
            return await take()

    def all_handlers_finished(self) -> bool:
        """No signal or update handler is running, and no accepted update waits for one."""
        return not self._handler_tasks and not self._update_tasks and not any(self._buffered_updates.values())

    # -- updates

    def set_update_handler(self, name: str, handler: UpdateHandler | None,
                           validator: UpdateHandler | None = None) -> None:
        """Registers (or, with ``None``, removes) an update's handler and validator; accepted
        updates waiting for that name go to it now."""
        if handler is None:
            self.update_handlers.pop(name, None)
            return
        self.update_handlers[name] = (handler, validator, signature_of(handler))
        for update_id, args in self._buffered_updates.pop(name, ()):
            self._start_update(update_id, name, args)

    def validate_update(self, name: str, args: list[Any]) -> None:
        """Runs the validator of update ``name`` read-only on the current state.

        Raises:
            QueryFailed: no handler of that name (type ``UnknownUpdate``), or the validator
                changed the workflow or returned an awaitable (``DeterminismViolation``).
            Exception: the validator's rejection (whatever it raised).
        """
        entry = self.update_handlers.get(name)
        if entry is None:
            known = ", ".join(sorted(self.update_handlers)) or "none"
            raise QueryFailed(f"workflow {self._instance.definition.name} has no update handler {name!r} "
                              f"(known: {known})", type="UnknownUpdate")
        typed = self.update_args(name, args)
        validator = entry[1]
        if validator is not None:
            self.read_only_call(validator, typed, f"the validator of update {name!r}")

    def update_args(self, name: str, args: list[Any]) -> list[Any]:
        """The update's JSON arguments as the handler's annotations type them (dataclasses,
        pydantic models ...), refusing arguments it cannot take: a rejection, not a broken task.

        Raises:
            QueryFailed: type ``InvalidArguments``.
        """
        handler, _, signature = self.update_handlers[name]
        try:
            if signature is not None:
                return signature.validate_args(args, f"update {name!r}")
            inspect.signature(handler).bind(*args)
        except (TypeError, InputValidationError, ConfigurationError) as exc:
            raise QueryFailed(f"update {name!r} cannot take these arguments: {exc}",
                              type="InvalidArguments") from None
        except ValueError:  # no signature to check (a builtin): the handler decides
            pass
        return args

    def deliver_update(self, update_id: str, name: str, args: list[Any]) -> None:
        """An ``UpdateAccepted`` event: its handler runs (or, removed since, waits for one)."""
        if name not in self.update_handlers:
            self._buffered_updates.setdefault(name, deque()).append((update_id, args))
            return
        self._start_update(update_id, name, args)

    def _start_update(self, update_id: str, name: str, args: list[Any]) -> None:
        # The handler as registered now (its arguments were validated when it was accepted).
        handler = self.update_handlers[name][0]
        task = self._instance.loop.create_task(self._run_update(update_id, name, handler, args),
                                               name=f"update handler {name}")
        self._update_tasks.add(task)
        task.add_done_callback(self._update_done)

    async def _run_update(self, update_id: str, name: str, handler: UpdateHandler, args: list[Any]) -> None:
        try:
            result = handler(*self.update_args(name, args))
            if inspect.isawaitable(result):
                result = await result
            value = to_payload(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._instance.is_bug(exc):
                raise  # fails the workflow task, like a bug in a signal handler
            self._instance.complete_update(update_id, error=exc)
            return
        self._instance.complete_update(update_id, result=value)

    def _update_done(self, task: asyncio.Task[None]) -> None:
        self._update_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.handler_error is None:
            self.handler_error = task.exception()

    # -- wait conditions

    async def wait_condition(self, predicate: Callable[[], Any], timeout: float | None) -> None:
        """Waits until ``predicate()`` is true (checked now, then whenever the code blocks)."""
        if predicate():
            return
        cond = _Condition(predicate, self._instance.loop.create_future())
        self._conditions.append(cond)
        try:
            if timeout is None:
                await cond.future
            else:
                async with asyncio.timeout(timeout):
                    await cond.future
        finally:
            if cond in self._conditions:
                self._conditions.remove(cond)

    def settle(self) -> None:
        """Runs the code until it blocks, then checks the conditions (in registration
        order) and runs the code they woke, until no condition changes."""
        loop = self._instance.loop
        loop.run_until_blocked()
        for _ in range(MAX_CONDITION_ROUNDS):
            if not self._conditions or loop.is_closed():
                return
            self._resolved = False
            # Checked as a callback, so predicates run in the workflow's context.
            context = contextvars.copy_context()
            context.run(_IN_WORKFLOW.set, True)
            loop.call_soon(self._check_conditions, context=context)
            loop.run_until_blocked()
            if not self._resolved:
                return
        raise DeterminismViolation(
            f"wait conditions kept resolving for {MAX_CONDITION_ROUNDS} rounds in one activation: is the code spinning?"
        )

    def _check_conditions(self) -> None:
        for cond in list(self._conditions):
            if cond.future.done():  # timed out or cancelled
                self._conditions.remove(cond)
                continue
            try:
                ok = cond.predicate()
            except Exception as exc:
                cond.future.set_exception(exc)
                ok = True
            else:
                if ok:
                    cond.future.set_result(None)
            if ok:
                self._conditions.remove(cond)
                self._resolved = True

    # -- queries

    def set_query_handler(self, name: str, handler: QueryHandler | None) -> None:
        """Registers (or, with ``None``, removes) a query handler."""
        if handler is None:
            self.query_handlers.pop(name, None)
        else:
            self.query_handlers[name] = (handler, signature_of(handler))

    def query(self, name: str, args: list[Any]) -> Any:
        """Calls a query handler on the instance's current state; returns its JSON answer.

        Raises:
            QueryFailed: no handler of that name (type ``UnknownQuery``), or the handler
                tried to change the workflow (``DeterminismViolation``) or returned an
                awaitable.
            Exception: whatever the handler raised.
        """
        entry = self.query_handlers.get(name)
        if entry is None:
            known = ", ".join(sorted(self.query_handlers)) or "none"
            raise QueryFailed(f"workflow {self._instance.definition.name} has no query handler {name!r} "
                              f"(known: {known})", type="UnknownQuery")
        handler, signature = entry
        typed, why = _typed_args(signature, args, f"query {name!r}")
        if typed is None:
            raise QueryFailed(f"query {name!r} cannot take these arguments: {why}", type="InvalidArguments")
        return to_payload(self.read_only_call(handler, typed, f"query handler {name!r}"))

    def read_only_call(self, handler: Callable[..., Any], args: list[Any], what: str) -> Any:
        """Calls a query handler or an update validator on the current state, refusing any
        change to the workflow (a command, work scheduled on its loop, an awaitable)."""
        loop = self._instance.loop
        ready = len(loop._ready)
        tasks = loop.tasks()
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(loop)
        token = _IN_WORKFLOW.set(True)
        self.querying = True
        try:
            result = handler(*args)
        finally:
            self.querying = False
            _IN_WORKFLOW.reset(token)
            asyncio.events._set_running_loop(previous)
            # Work the handler queued (a task, a callback) would change the workflow on its
            # next activation: drop it.
            scheduled = len(loop._ready) - ready
            for _ in range(max(scheduled, 0)):
                loop._ready.pop().cancel()
            for task in loop.tasks() - tasks:
                coro = task.get_coro()
                if inspect.iscoroutine(coro):
                    coro.close()  # never started: close it, or its garbage collection warns
        if scheduled > 0:
            raise QueryFailed(f"{what} scheduled work on the workflow loop: it must be read-only",
                              type="DeterminismViolation")
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise QueryFailed(f"{what} returned an awaitable: it must be a plain "
                              "(non-async) function", type="DeterminismViolation")
        return result


@dataclass(frozen=True)
class Admitted:
    """A workflow task's inbox after its update requests were validated.

    Attributes:
        inbox: the rows to deliver, accepted updates as ``UpdateAccepted``.
        consumed: the inbox ids the task consumes (rejected updates included; update
            requests the task defers stay in the inbox).
        rejected: ``{"update_id", "failure"}`` of each rejected update.
    """

    inbox: list[tuple[int, str, Any]]
    consumed: list[int]
    rejected: list[dict[str, Any]] = field(default_factory=list)


def admit_updates(inst: WorkflowInstance, inbox: Sequence[tuple[int, str, Any]]) -> Admitted:
    """Runs the validators of the inbox's ``UpdateRequested`` events on the instance's
    current state (before the batch's events are delivered).

    A rejected update leaves no history event (Temporal's rule): it is consumed and
    reported in ``rejected``. A run whose code has not started yet (its first workflow
    task, as after update-with-start) has registered no handler: its update requests wait
    in the inbox for the next task, which runs at once (the record keeps the task).
    """
    if not any(row[1] == h.UPDATE_REQUESTED for row in inbox):
        return Admitted(list(inbox), [row[0] for row in inbox])
    started = inst.started_code
    rows: list[tuple[int, str, Any]] = []
    consumed: list[int] = []
    rejected: list[dict[str, Any]] = []
    for row in inbox:
        inbox_id, kind, data = row
        if kind != h.UPDATE_REQUESTED:
            rows.append(row)
            consumed.append(inbox_id)
            continue
        if not started:
            continue  # deferred: the code registers its handlers first
        consumed.append(inbox_id)
        name, args = str(data["name"]), list(data.get("args") or [])
        try:
            inst.messages.validate_update(name, args)
        except Exception as exc:
            kind_of = exc.type if isinstance(exc, QueryFailed | WorkflowFailure) and exc.type else type(exc).__name__
            failure = {"type": kind_of, "message": str(exc),
                       "details": exc.details if isinstance(exc, WorkflowFailure) else None}
            rejected.append({"update_id": data["update_id"], "failure": redact_value(failure)})
            continue
        rows.append((inbox_id, h.UPDATE_ACCEPTED, data))
    return Admitted(rows, consumed, rejected)


def signature_of(handler: Callable[..., Any]) -> Signature | None:
    """A handler's typed parameters (a bound method's without ``self``), or None when they
    cannot be listed (``*args``, keyword-only parameters, a builtin): its arguments then
    pass as they are."""
    try:
        return Signature(handler)
    except (TypeError, ValueError):
        return None


def signal_args(data: dict[str, Any]) -> list[Any]:
    """A ``SignalReceived`` event's arguments: ``args``, else the one ``payload`` (every
    history written before signals took several arguments has that form)."""
    args = data.get("args")
    return list(args) if isinstance(args, list) else [data.get("payload")]


def _typed_args(signature: Signature | None, args: list[Any], what: str) -> tuple[list[Any] | None, str]:
    """The arguments as the handler's annotations type them, or None and why it cannot take
    them. A signal sent with no argument is recorded as one ``null``: a handler that takes
    no parameter is called with none."""
    if signature is None:
        return args, ""
    if args == [None] and not signature.adapters:
        return [], ""
    try:
        return signature.validate_args(args, what), ""
    except (InputValidationError, ConfigurationError) as exc:
        return None, str(exc)


async def _call_handler(handler: SignalHandler, args: list[Any]) -> None:
    result = handler(*args)
    if inspect.isawaitable(result):
        await result
