"""Workflows as classes, and the decorators of their message handlers (Temporal's form).

```python
@workflow.defn
class GreetingWorkflow:
    def __init__(self) -> None:          # or @workflow.init: __init__ takes the run's arguments
        self.greetings: list[str] = []

    @workflow.run
    async def run(self, name: str) -> str: ...

    @workflow.signal
    async def submit_greeting(self, name: str) -> None: ...

    @workflow.query
    def get_greetings(self) -> list[str]: ...

    @workflow.update
    def set_language(self, language: Language) -> Language: ...

    @set_language.validator
    def validate_language(self, language: Language) -> None: ...
```

:func:`define_class` turns such a class into a :class:`WorkflowDefinition` whose function
makes one instance per run (``cls()``, or ``cls(*args)`` under ``@workflow.init``),
registers its handlers bound to that instance, lets signals that arrived before the code
started reach their handlers (as Temporal runs them before ``run``), then awaits the run
method. Replay makes the same calls in the same order, so nothing here is recorded.
Arguments are typed by each method's annotations (:class:`~cairn.payloads.Signature`),
several per handler; a client that names a handler by its method
(``handle.signal(GreetingWorkflow.submit_greeting, "x")``) has them checked before
anything is written, and gets a query's or an update's result typed by its return
annotation (:func:`message_ref`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

from cairn.engine.instance import WorkflowDefinition
from cairn.engine.loop import current_instance
from cairn.errors import InputValidationError
from cairn.payloads import Signature

__all__ = ["Handler", "define_class", "init", "message_ref", "query", "run", "signal", "update"]

Kind = Literal["signal", "query", "update"]
M = TypeVar("M", bound=Callable[..., Any])
MAX_NAME_LENGTH = 200  # as the client's signal, query and update names


@dataclass
class Handler:
    """What a ``@workflow.signal`` / ``query`` / ``update`` decorator records on a method."""

    kind: Kind
    name: str
    fn: Callable[..., Any]
    validator: Callable[..., Any] | None = None  # updates only: ``@<update>.validator``


def run(fn: M, /) -> M:
    """Marks a workflow class's ``async def`` entry point; its arguments are the run's."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"@workflow.run needs an async def, got {fn!r}")
    fn.__cairn_run__ = True  # type: ignore[attr-defined]
    return fn


def init(fn: M, /) -> M:
    """Marks a workflow class's ``__init__`` as taking the run's arguments (the same
    parameters as the ``@workflow.run`` method), so handlers can use state built from them
    even when a signal or an update arrives before the run method starts."""
    if fn.__name__ != "__init__":
        raise TypeError(f"@workflow.init goes on __init__, not on {fn.__qualname__}")
    fn.__cairn_init__ = True  # type: ignore[attr-defined]
    return fn


def _decorator(kind: Kind, fn: M | None, name: str | None) -> M | Callable[[M], M]:
    def wrap(f: M) -> M:
        if not callable(f):
            raise TypeError(f"@workflow.{kind} goes on a method, not on {f!r}")
        if kind == "query" and inspect.iscoroutinefunction(f):
            raise TypeError(f"@workflow.query needs a plain (non-async) method, got async {f.__qualname__}")
        handler_name = _checked_name(name if name is not None else f.__name__, kind)
        f.__cairn_handler__ = handler = Handler(kind, handler_name, f)  # type: ignore[attr-defined]
        if kind == "update":
            def validator(v: Callable[..., Any]) -> Callable[..., Any]:
                if inspect.iscoroutinefunction(v):
                    raise TypeError(f"an update validator must be a plain (non-async) method, got {v.__qualname__}")
                handler.validator = v
                return v
            f.validator = validator  # type: ignore[attr-defined]
        return f

    return wrap(fn) if fn is not None else wrap


@overload
def signal(fn: M, /) -> M: ...
@overload
def signal(*, name: str | None = None) -> Callable[[M], M]: ...
def signal(fn: M | None = None, /, *, name: str | None = None) -> M | Callable[[M], M]:
    """Marks a method as the handler of signal ``name`` (default: the method's name).

    A plain method or an ``async def`` that may await activities and timers; its arguments
    are typed by its annotations. A signal whose arguments it cannot take is dropped with a
    warning (Temporal's rule); an exception it raises fails the run.
    """
    return _decorator("signal", fn, name)


@overload
def query(fn: M, /) -> M: ...
@overload
def query(*, name: str | None = None) -> Callable[[M], M]: ...
def query(fn: M | None = None, /, *, name: str | None = None) -> M | Callable[[M], M]:
    """Marks a plain (non-async) method as the handler of query ``name``: it reads the
    instance's state and returns a JSON-able value; it must not change the workflow."""
    return _decorator("query", fn, name)


@overload
def update(fn: M, /) -> M: ...
@overload
def update(*, name: str | None = None) -> Callable[[M], M]: ...
def update(fn: M | None = None, /, *, name: str | None = None) -> M | Callable[[M], M]:
    """Marks a method as the handler of update ``name``; ``@<method>.validator`` marks a
    plain method that runs first, read-only, and rejects the update by raising (see
    :func:`cairn.workflow.set_update_handler`)."""
    return _decorator("update", fn, name)


def _checked_name(name: str, kind: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise TypeError(f"a {kind} name must be a non-empty string of at most {MAX_NAME_LENGTH} characters, "
                        f"got {name!r}")
    return name


def define_class(cls: type, name: str) -> WorkflowDefinition:
    """The definition of a workflow class (``@workflow.defn`` on a class).

    Raises:
        TypeError: no ``@workflow.run`` method or several, two handlers of one kind with one
            name, or an ``@workflow.init`` ``__init__`` whose parameters differ from the run's.
    """
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):  # a subclass's method overrides its base's
        members.update(vars(klass))
    runs = [attr for attr, value in members.items() if getattr(value, "__cairn_run__", False)]
    if len(runs) != 1:
        found = ", ".join(runs) or "none"
        raise TypeError(f"workflow class {cls.__qualname__} needs exactly one @workflow.run method (found {found})")
    run_attr = runs[0]
    handlers: list[tuple[str, Handler]] = []
    seen: dict[tuple[str, str], str] = {}
    for attr, value in members.items():
        handler = getattr(value, "__cairn_handler__", None)
        if not isinstance(handler, Handler):
            continue
        other = seen.setdefault((handler.kind, handler.name), attr)
        if other != attr:
            raise TypeError(f"workflow class {cls.__qualname__}: {other} and {attr} both handle "
                            f"{handler.kind} {handler.name!r}")
        handlers.append((attr, handler))
    signature = Signature(members[run_attr], method=True)
    constructor = members["__init__"]  # the class's own, or object's
    takes_args = bool(getattr(constructor, "__cairn_init__", False))
    if takes_args and Signature(constructor, method=True).names != signature.names:
        raise TypeError(f"workflow class {cls.__qualname__}: @workflow.init __init__ must take the same "
                        f"parameters as {run_attr} ({', '.join(signature.names) or 'none'})")

    async def main(*args: Any) -> Any:
        obj = cls(*args) if takes_args else cls()
        messages = current_instance().messages
        for attr, handler in handlers:
            bound = getattr(obj, attr)
            if handler.kind == "signal":
                messages.set_signal_handler(handler.name, bound)
            elif handler.kind == "query":
                messages.set_query_handler(handler.name, bound)
            else:
                validator = handler.validator.__get__(obj) if handler.validator is not None else None
                messages.set_update_handler(handler.name, bound, validator)
        # Signals that came before the code started now have handler tasks: let them take
        # their first step before the run method does, as Temporal does.
        await asyncio.sleep(0)
        method: Callable[..., Coroutine[Any, Any, Any]] = getattr(obj, run_attr)
        return await method(*args)

    main.__name__ = main.__qualname__ = f"{cls.__qualname__}.{run_attr}"
    return WorkflowDefinition(name, main, signature)


def message_ref(ref: Any, kind: Kind) -> tuple[str, Signature | None]:
    """A signal, query or update named by the client: a string, or a workflow class's
    decorated method (then with its typed parameters and result).

    Raises:
        InputValidationError: a method with no ``@workflow.<kind>`` decorator.
    """
    if isinstance(ref, str):
        return ref, None
    handler = getattr(ref, "__cairn_handler__", None)
    if not isinstance(handler, Handler) or handler.kind != kind:
        raise InputValidationError(f"{ref!r} is not a @workflow.{kind} method: pass its name or the decorated method")
    return handler.name, Signature(handler.fn, method=True)


def check_message_args(signature: Signature | None, args: list[Any], what: str) -> None:
    """Checks a message's JSON arguments against the handler's typed parameters (a signal
    with no argument fits a handler that takes none).

    Raises:
        InputValidationError: what does not fit, naming each bad argument.
    """
    if signature is not None and (args or signature.adapters):
        signature.validate_args(args, what)
