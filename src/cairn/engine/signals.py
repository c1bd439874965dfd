"""Messages of one workflow instance: signals, wait conditions and queries.

Signals arrive as ``SignalReceived`` input events, so replay delivers them in the same
batches, in the same order, as the live run saw them. A signal whose name has a handler
goes to the handler (run as a task on the workflow loop); otherwise it is buffered, in
arrival order, until a :meth:`Messages.wait_signal` takes it. Wait conditions are checked
whenever the code is blocked, in registration order, until none changes. Queries run a
read-only handler against the instance's state and record nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cairn.engine.loop import _IN_WORKFLOW
from cairn.errors import DeterminismViolation, QueryFailed
from cairn.payloads import to_payload

if TYPE_CHECKING:
    from cairn.engine.instance import WorkflowInstance

SignalHandler = Callable[[Any], Any]
QueryHandler = Callable[..., Any]
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
        self.buffered: dict[str, deque[Any]] = {}
        self.signal_handlers: dict[str, SignalHandler] = {}
        self.query_handlers: dict[str, QueryHandler] = {}
        self._signal_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._conditions: list[_Condition] = []
        self._resolved = False
        # The first exception a signal handler raised: it fails the run (or, if it is a
        # bug, the workflow task), like an exception of the main coroutine.
        self.handler_error: BaseException | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self.querying = False  # a query handler runs: commands are refused

    # -- signals

    def deliver(self, name: str, payload: Any) -> None:
        """A ``SignalReceived`` event: to its handler, else into the buffer."""
        handler = self.signal_handlers.get(name)
        if handler is not None:
            self._start_handler(name, handler, payload)
            return
        self.buffered.setdefault(name, deque()).append(payload)
        for fut in self._signal_waiters.pop(name, []):
            if not fut.done():
                fut.set_result(None)

    def set_signal_handler(self, name: str, handler: SignalHandler | None) -> None:
        """Registers (or, with ``None``, removes) a handler; buffered signals go to it now."""
        if handler is None:
            self.signal_handlers.pop(name, None)
            return
        self.signal_handlers[name] = handler
        for payload in self.buffered.pop(name, ()):
            self._start_handler(name, handler, payload)

    def _start_handler(self, name: str, handler: SignalHandler, payload: Any) -> None:
        task = self._instance.loop.create_task(_call_handler(handler, payload), name=f"signal handler {name}")
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
            payload = queue.popleft()
            if not queue:
                del self.buffered[name]
            return payload

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

    def query(self, name: str, args: list[Any]) -> Any:
        """Calls a query handler on the instance's current state; returns its JSON answer.

        Raises:
            QueryFailed: no handler of that name (type ``UnknownQuery``), or the handler
                tried to change the workflow (``DeterminismViolation``) or returned an
                awaitable.
            Exception: whatever the handler raised.
        """
        handler = self.query_handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.query_handlers)) or "none"
            raise QueryFailed(f"workflow {self._instance.definition.name} has no query handler {name!r} "
                              f"(known: {known})", type="UnknownQuery")
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
            raise QueryFailed(f"query handler {name!r} scheduled work on the workflow loop: query handlers must "
                              "be read-only", type="DeterminismViolation")
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise QueryFailed(f"query handler {name!r} returned an awaitable: query handlers must be plain "
                              "(non-async) functions", type="DeterminismViolation")
        return to_payload(result)


async def _call_handler(handler: SignalHandler, payload: Any) -> None:
    result = handler(payload)
    if inspect.isawaitable(result):
        await result
