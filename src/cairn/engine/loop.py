"""A deterministic asyncio event loop for workflow code.

Workflow code runs on one :class:`WorkflowLoop` per live instance. ``call_soon`` queues
callbacks in order; ``call_later``/``call_at`` (and so ``asyncio.sleep``, ``wait_for``,
``asyncio.timeout``) become durable timer commands; ``time()`` is workflow time, taken from
history. Anything that would do I/O raises :class:`~cairn.errors.DeterminismViolation`.
The loop never blocks: :meth:`run_until_blocked` runs ready callbacks until none is left,
which is the moment every coroutine of the workflow waits on something from history.

The determinism guard (installed by the worker, :func:`install_guard`) has two halves: an
audit hook for I/O (files, sockets, subprocesses), and a profile hook, set only while
:meth:`WorkflowLoop.run_until_blocked` runs, for what no audit event covers: the wall
clock, the global random generator, ``uuid1``/``uuid4``, ``os.urandom``/``secrets`` and
threads. Either raises :class:`~cairn.errors.DeterminismViolation` naming the call and its
deterministic alternative, and notes it on the instance so that the workflow task fails
even if the code swallowed the exception.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import datetime
import functools
import os
import random
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from cairn.errors import CairnError, DeterminismViolation

if TYPE_CHECKING:
    from cairn.engine.instance import WorkflowInstance

# True while workflow code runs on this thread; read by the audit hook below.
_IN_WORKFLOW: contextvars.ContextVar[bool] = contextvars.ContextVar("cairn_in_workflow", default=False)

# Audit events that mean I/O a replay could not reproduce.
_FORBIDDEN_EVENTS = frozenset({
    "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork",
    "os.remove", "os.rename", "os.mkdir", "shutil.rmtree", "urllib.Request",
})
# Reading source and extension files is how lazy imports work; anything else is I/O.
_IMPORT_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pth", ".pyi")
_WRITE_MODES = frozenset("wax+")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# Callbacks run per activation before the loop declares the workflow stuck in a busy loop.
MAX_CALLBACKS_PER_ACTIVATION = 1_000_000


def _is_bytecode_cache(path: Any) -> bool:
    """The import system writes ``__pycache__`` entries during a lazy import: allowed."""
    return isinstance(path, str | bytes | os.PathLike) and "__pycache__" in os.fsdecode(path)


def _reads_source(path: Any, mode: Any, flags: Any) -> bool:
    if not (isinstance(path, str | bytes | os.PathLike) and os.fsdecode(path).endswith(_IMPORT_SUFFIXES)):
        return False
    if isinstance(mode, str):
        return not _WRITE_MODES & set(mode)
    return isinstance(flags, int) and not flags & _WRITE_FLAGS


def _violation(message: str) -> DeterminismViolation:
    """The error to raise, noted on the running instance first (see WorkflowInstance.violation)."""
    exc = DeterminismViolation(message)
    loop = asyncio.events._get_running_loop()
    if isinstance(loop, WorkflowLoop) and loop.instance.violation is None:
        loop.instance.violation = exc
    return exc


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _IN_WORKFLOW.get():
        return
    if event == "open":
        path, mode, flags = (*args, None, None, None)[:3]
        if isinstance(path, int) or _is_bytecode_cache(path) or _reads_source(path, mode, flags):
            return
        raise _violation(f"workflow code opened {path!r}: do I/O in an activity, not in the workflow")
    if event in _FORBIDDEN_EVENTS:
        if event in ("os.mkdir", "os.rename") and args and _is_bytecode_cache(args[0]):
            return
        raise _violation(f"workflow code did {event}: do I/O in an activity, not in the workflow")


# -- the profile hook: calls that no audit event covers

_CLOCK = "use workflow.now() (workflow time, the same on every replay)"
_RANDOM = "use workflow.random() (a generator seeded from the run id)"
_UUID = "use workflow.uuid4()"
_SECRET = "make secrets in an activity (they must not enter history anyway)"
_THREAD = "run it in an activity"
_SLEEP = "use await workflow.sleep() or asyncio.sleep() (a durable timer)"

# C functions and methods, looked up by equality (a bound builtin method equals another
# binding of the same method to the same object): callable -> (name, alternative).
_C_CALLS: dict[Any, tuple[str, str]] = {
    **{getattr(time, n): (f"time.{n}", _CLOCK) for n in (
        "time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns")},
    time.sleep: ("time.sleep", _SLEEP),
    datetime.datetime.now: ("datetime.now", _CLOCK),
    datetime.datetime.utcnow: ("datetime.utcnow", _CLOCK),
    datetime.datetime.today: ("datetime.today", _CLOCK),
    datetime.date.today: ("date.today", _CLOCK),
    random.random: ("random.random", _RANDOM),
    random.getrandbits: ("random.getrandbits", _RANDOM),
    os.urandom: ("os.urandom", _SECRET),
    threading._start_new_thread: ("_thread.start_new_thread", _THREAD),  # type: ignore[attr-defined]
}
# Python functions, looked up by code object when called: code -> (name, alternative).
_PY_CALLS: dict[CodeType, tuple[str, str]] = {
    uuid.uuid1.__code__: ("uuid.uuid1", _UUID),
    uuid.uuid4.__code__: ("uuid.uuid4", _UUID),
    threading.Thread.start.__code__: ("threading.Thread.start", _THREAD),
    concurrent.futures.ThreadPoolExecutor.submit.__code__: ("ThreadPoolExecutor.submit", _THREAD),
    concurrent.futures.ProcessPoolExecutor.submit.__code__: ("ProcessPoolExecutor.submit", _THREAD),
    **{getattr(secrets, n).__code__: (f"secrets.{n}", _SECRET) for n in (
        "token_bytes", "token_hex", "token_urlsafe", "randbelow")},
}
# random.Random's Python methods: forbidden only when bound to the module's hidden global
# generator (random.randint & co.) or to secrets' SystemRandom; workflow.random() is
# another instance of the same class and runs the same code.
_RANDOM_METHODS: dict[CodeType, str] = {
    fn.__code__: name for name in dir(random.Random)
    if not name.startswith("_") and hasattr(fn := getattr(random.Random, name), "__code__")
}
_SHARED_GENERATORS: dict[int, tuple[str, str]] = {
    id(random._inst): ("random", _RANDOM),
    id(secrets._sysrand): ("secrets", _SECRET),  # type: ignore[attr-defined]
}
# Modules whose calls (and the calls of what they call) are allowed: the standard
# library's logging stamps each record with time.time() (workflow.logger goes through it).
_EXEMPT_CALLERS = ("logging",)


def _called_from_exempt(frame: FrameType | None) -> bool:
    """Whether a frame on the stack belongs to an exempt module: logging, and so also the
    handlers and formatters it calls (a JSON formatter stamping ``datetime.now()``)."""
    depth = 0
    while frame is not None and depth < 64:
        if str(frame.f_globals.get("__name__", "")).startswith(_EXEMPT_CALLERS):
            return True
        frame = frame.f_back
        depth += 1
    return False


def _profile(frame: FrameType, event: str, arg: Any) -> None:
    """The profile hook set while workflow code runs (see the module docstring)."""
    if event == "c_call":
        try:
            hit = _C_CALLS.get(arg)
        except TypeError:  # a method of an unhashable object: never one of ours
            return
        if hit is None:
            return
        caller: FrameType | None = frame
    elif event == "call":
        code = frame.f_code
        hit = _PY_CALLS.get(code)
        if hit is None:
            method = _RANDOM_METHODS.get(code)
            if method is None:
                return
            shared = _SHARED_GENERATORS.get(id(frame.f_locals.get("self")))
            if shared is None:
                return
            hit = (f"{shared[0]}.{method}", shared[1])
        caller = frame.f_back
    else:
        return
    if _called_from_exempt(caller):
        return
    name, alternative = hit
    # Raising from a profile hook makes the interpreter drop the hook for the rest of the
    # activation; the violation noted on the instance fails the task anyway.
    raise _violation(f"workflow code called {name}(), which differs on replay: {alternative}")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def unguarded(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Runs one of Cairn's own authoring calls (``workflow.start_activity``,
    ``start_local_activity``, a child's argument checks) with the profile
    hook off: the hook's event per Python call and return cost a W2 worker 11 % of its
    samples, most of them inside the call's validation and conversion (py-spy, 2026-12-07).
    Workflow code calls it, so what it calls back (a pydantic validator or serializer of
    the arguments' types) is not watched for clock and random calls; the audit hook (I/O)
    stays on."""

    @functools.wraps(fn)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if sys.getprofile() is not _profile:
            return fn(*args, **kwargs)
        sys.setprofile(None)
        try:
            return fn(*args, **kwargs)
        finally:
            sys.setprofile(_profile)

    return call


_audit_installed = False


def install_guard() -> None:
    """Installs the determinism guard: the audit hook now, the profile hook in every
    activation from now on (see the module docstring)."""
    global _audit_installed
    if not _audit_installed:
        sys.addaudithook(_audit)
        _audit_installed = True


def guard_installed() -> bool:
    """Whether :func:`install_guard` has run in this process."""
    return _audit_installed


def in_workflow() -> bool:
    """Whether the calling code runs inside a workflow activation."""
    return _IN_WORKFLOW.get()


def current_instance() -> WorkflowInstance:
    """The workflow instance whose code is running (the authoring API's way in).

    Raises:
        CairnError: the caller is not workflow code.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if not isinstance(loop, WorkflowLoop):
        raise CairnError("this works only inside workflow code")
    return loop.instance


class WorkflowLoop(asyncio.AbstractEventLoop):
    """The event loop of one workflow instance (see the module docstring)."""

    def __init__(self, instance: WorkflowInstance) -> None:
        self.instance = instance
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._running = False
        self._closed = False
        self._errors: list[BaseException] = []
        # The tasks created on this loop, done ones pruned as it grows. asyncio.all_tasks(loop)
        # walks every task of the process (a cached instance each) to find them: evicting
        # from a cache of 1,000 runs cost 0.9 ms per eviction that way.
        self._tasks: list[asyncio.Task[Any]] = []
        self._prune_at = 16

    # -- driving

    def run_until_blocked(self) -> None:
        """Runs ready callbacks until none is left. Pure CPU: nothing here waits."""
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        token = _IN_WORKFLOW.set(True)
        self._running = True
        budget = MAX_CALLBACKS_PER_ACTIVATION
        # The profile hook yields to a profiler already set (cProfile, a debugger): a C
        # profiler could not be restored through sys.setprofile afterwards.
        guarded = _audit_installed and sys.getprofile() is None
        if guarded:
            sys.setprofile(_profile)
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle._cancelled:
                    handle._run()
                if self._errors:
                    raise self._errors.pop(0)
                budget -= 1
                if budget == 0:
                    raise DeterminismViolation(
                        "workflow code scheduled over a million callbacks in one activation "
                        "without waiting on anything durable: is it spinning?"
                    )
        finally:
            if guarded:
                sys.setprofile(None)
            self._running = False
            _IN_WORKFLOW.reset(token)
            asyncio.events._set_running_loop(previous)

    def fire(self, handle: asyncio.TimerHandle) -> None:
        """Queues a timer's callback: its TimerFired event has been delivered."""
        if not handle._cancelled:
            self._ready.append(handle)

    # -- scheduling

    # The scheduling signatures are looser than typeshed's TypeVarTuple ones on purpose.
    def call_soon(self, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                   context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(self.time() + max(delay, 0.0), callback, args, self, context)
        if delay <= 0:
            self._ready.append(handle)
        else:
            self.instance.start_timer(handle, delay)
        return handle

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        return self.call_later(when - self.time(), callback, *args, context=context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self.instance.cancel_timer(handle)

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                             context: contextvars.Context | None = None) -> NoReturn:
        raise DeterminismViolation("threads cannot reach into workflow code")

    def time(self) -> float:
        return self.instance.now_ts

    # -- futures and tasks

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(self, coro: Coroutine[Any, Any, Any] | Any, *, name: str | None = None,
                    context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        if context is None:
            # A task runs in a copy of the creator's context; the first task is created
            # before run_until_blocked sets the flag, so set it in the copy itself.
            context = contextvars.copy_context()
            context.run(_IN_WORKFLOW.set, True)
        task = asyncio.Task(coro, loop=self, name=name, context=context)
        self._tasks.append(task)
        if len(self._tasks) >= self._prune_at:
            self._tasks = [t for t in self._tasks if not t.done()]
            self._prune_at = max(16, 2 * len(self._tasks))
        return task

    def tasks(self) -> set[asyncio.Task[Any]]:
        """The tasks of this loop not done yet (``asyncio.all_tasks`` for this loop alone)."""
        return {t for t in self._tasks if not t.done()}

    # -- state

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()
        self._tasks.clear()

    def get_debug(self) -> bool:
        return False

    def set_debug(self, enabled: bool) -> None:
        pass

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if self._running and isinstance(exc, BaseException) and "future" not in context:
            # An error in a plain callback (not in a task, whose errors stay with the task).
            self._errors.append(exc)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    # -- everything that would leave the process is refused

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> NoReturn:  # type: ignore[override]
        raise DeterminismViolation("workflow code cannot use threads or executors: use an activity")

    def _io(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise DeterminismViolation("workflow code cannot do network or file I/O: use an activity")

    getaddrinfo = getnameinfo = create_connection = create_server = _io
    create_datagram_endpoint = create_unix_connection = create_unix_server = _io
    sock_recv = sock_sendall = sock_connect = sock_accept = _io
    subprocess_exec = subprocess_shell = add_reader = add_writer = _io  # type: ignore[assignment]
    add_signal_handler = connect_read_pipe = connect_write_pipe = _io  # type: ignore[assignment]
