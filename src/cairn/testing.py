"""Helpers for testing workflows: replay a recorded history against the current code, and run
workflows end to end with a worker in the test's own process.

Replaying catches a change that would break runs already in flight before it ships: record a
history with ``cairn history ID --json > tests/histories/order.json`` and assert in a test that
:func:`replay_history` accepts it (it raises :class:`~cairn.errors.NonDeterminismError` where
the code no longer produces what the history recorded)::

    from cairn.testing import replay_history

    def test_order_history_still_replays():
        replay_history([place_order], "tests/histories/order.json")

:func:`worker` runs a :class:`~cairn.Worker` in this process for the duration of an
``async with`` block and yields a :class:`~cairn.Client` on the same database::

    async with cairn.testing.worker(url, workflows=[place_order], activities=[charge]) as client:
        handle = await client.start(place_order, "o-1", id="o-1")
        assert await handle.result(timeout=30) == "charged o-1"

:class:`Workers` starts several in-process workers on one database (each with its own
options) and stops them together.

:class:`WorkflowEnvironment` is Temporal's test environment: ``start_time_skipping`` runs
the database's workflows on a virtual clock that jumps to the next due moment while the test
waits on a result, so a 90-day sleep takes a second::

    async with await WorkflowEnvironment.start_time_skipping(url) as env:
        async with env.worker(workflows=[reminder], activities=[send_email_mock]):
            handle = await env.client.start(reminder, 90, id="r-1")
            assert await handle.result(timeout=30) == "sent"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cairn.client import Client
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.errors import InputValidationError, UnknownWorkflowType, WorkflowTaskFailed
from cairn.store import archive as _archive
from cairn.store import clock as _clock
from cairn.store import db
from cairn.store import runs as _runs
from cairn.worker import Worker
from cairn.workflow import WorkflowDefinition, WorkflowInfo, definition_of

__all__ = ["TEST_WORKER_OPTIONS", "ReplayResult", "Workers", "WorkflowEnvironment", "replay_history", "worker"]

log = logging.getLogger("cairn.testing")

# Worker options that suit tests: work is picked up within 0.2 s of becoming due, and a
# worker a test stops without draining hands its activities over after 5 s.
TEST_WORKER_OPTIONS: Mapping[str, Any] = {"poll_interval": 0.2, "lease_seconds": 5.0}
STOP_TIMEOUT_SECONDS = 40.0  # a worker's drain: its running activities' grace, and then some

History = str | os.PathLike[str] | Mapping[str, Any] | Sequence[Event | Mapping[str, Any]]


# ---------------------------------------------------------------- replaying a history


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What :func:`replay_history` replayed.

    Attributes:
        workflow_id: the recorded run's workflow id.
        run_id: the recorded run's id.
        workflow_type: the workflow type the history names (the code replayed).
        events: how many events were replayed.
    """

    workflow_id: str
    run_id: str
    workflow_type: str
    events: int


def replay_history(workflows: Callable[..., Any] | Iterable[Callable[..., Any]], history: History, *,
                   namespace: str = "default", run_id: str | None = None) -> ReplayResult:
    """Replays a recorded history through the current workflow code, as a worker would after
    a restart, and checks every command the code produces against the recorded one.

    Nothing is run: activities, timers and child workflows are answered from the history.

    Args:
        workflows: a ``@workflow.defn`` function, or several; the history's workflow type
            picks the one replayed.
        history: the path of a file written by ``cairn history ID --json`` or of an
            archive file (JSON lines, one run each: retention and ``cairn purge``), that
            file's parsed JSON (a dict with ``"events"``), or the events themselves
            (:class:`~cairn.engine.history.Event` objects or their JSON form), starting at
            ``WorkflowStarted``.
        namespace: the namespace the code sees in ``workflow.info()``.
        run_id: in an archive file of several runs, the run to replay.

    Returns:
        What was replayed.

    Raises:
        NonDeterminismError: the code produced a command other than the recorded one, or
            none where one was recorded (its ``seq``, ``expected`` and ``produced`` say where).
        UnknownWorkflowType: none of ``workflows`` has the history's workflow type.
        InputValidationError: ``history`` is not a history.
        Exception: the workflow code raised while replaying (a bug in it); the exception
            it raised.
    """
    data = _history_data(history, run_id)
    try:
        events = [e if isinstance(e, Event) else Event.from_json(dict(e)) for e in data["events"]]
        if not events:
            raise ValueError("it has no events")
        name = str(data.get("workflow_type") or events[0].data["workflow_type"])
        workflow_id = str(data.get("workflow_id") or events[0].data.get("workflow_id") or name)
        run_id = str(uuid.UUID(str(data.get("run_id") or uuid.UUID(int=0))))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise InputValidationError(f"malformed history: {exc}") from None
    definition = _definition(workflows, name)
    info = WorkflowInfo(workflow_id=workflow_id, run_id=run_id, workflow_type=name,
                        queue=str(data.get("queue") or "default"), namespace=namespace,
                        start_time=events[0].at or datetime.fromtimestamp(0, UTC))
    # The instance is made first (from WorkflowStarted alone), so that it is unwound however
    # the replay of the rest ends.
    instance = replay(definition, info, events[:1])
    try:
        replay(definition, info, events[1:], instance=instance)
    except WorkflowTaskFailed as exc:  # the code raised: its own exception, or NonDeterminismError
        raise exc.cause from None
    finally:
        instance.dispose()
    return ReplayResult(workflow_id, run_id, name, len(events))


def _history_data(history: History, run_id: str | None = None) -> Mapping[str, Any]:
    if isinstance(history, str | os.PathLike) and _archive.is_json_lines(history):
        runs = list(_archive.read_runs(history, run_id=run_id))
        if not runs:
            raise InputValidationError(f"{history} holds no run" + (f" {run_id}" if run_id else ""))
        if len(runs) > 1:
            raise InputValidationError(f"{history} holds {len(runs)} runs: pass run_id= to pick one")
        return runs[0].document
    if isinstance(history, str | os.PathLike):
        path = Path(history)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputValidationError(f"cannot read the history {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("events"), list):
            raise InputValidationError(f"{path} is not a history file (want the output of `cairn history --json`)")
        return data
    if isinstance(history, Mapping):
        if not isinstance(history.get("events"), list):
            raise InputValidationError("a history mapping needs a list of events under 'events'")
        return history
    return {"events": list(history)}


def _definition(workflows: Callable[..., Any] | Iterable[Callable[..., Any]], name: str) -> WorkflowDefinition:
    candidates = [workflows] if callable(workflows) else list(workflows)
    definitions = [definition_of(fn) for fn in candidates]
    for d in definitions:
        if d.name == name:
            return d
    known = ", ".join(d.name for d in definitions) or "none"
    raise UnknownWorkflowType(f"the history is of workflow type {name!r}; the workflows given are {known}")


# ---------------------------------------------------------------- in-process workers


class Workers:
    """Workers running in this process on one database, stopped together.

    ``async with Workers(url) as workers:`` then ``await workers.start(workflows=[...],
    activities=[...])`` for each worker wanted; leaving the block stops (drains) them all.

    Args:
        url: the database (``None``: ``CAIRN_DATABASE_URL``, else the embedded server).
        **defaults: :class:`~cairn.Worker` options for every worker started; on top of
            :data:`TEST_WORKER_OPTIONS`, under each :meth:`start`'s own.
    """

    def __init__(self, url: str | None = None, **defaults: Any) -> None:
        self.url = url
        self.defaults = {**TEST_WORKER_OPTIONS, **defaults}
        self._running: list[tuple[Worker, asyncio.Task[None]]] = []

    @property
    def workers(self) -> list[Worker]:
        """The workers started so far, in order."""
        return [w for w, _ in self._running]

    async def start(self, *, workflows: Iterable[Callable[..., Any]] = (),
                    activities: Iterable[Callable[..., Any]] = (), **options: Any) -> Worker:
        """Starts a worker and returns it once it claims work.

        Args:
            workflows: the ``@workflow.defn`` functions it runs.
            activities: the ``@activity.defn`` functions it runs.
            **options: further :class:`~cairn.Worker` options (``queues``, ``identity``, ...).

        Raises:
            Exception: what the worker raised while starting (an unreachable database, a
                schema not migrated, ...).
        """
        w = Worker(self.url, workflows=workflows, activities=activities, **{**self.defaults, **options})
        runner = asyncio.create_task(w.run())
        started = asyncio.create_task(w.started())
        done, _ = await asyncio.wait({runner, started}, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            started.cancel()
            runner.result()  # raises what stopped it; a worker that returned is kept, to be stopped
        self._running.append((w, runner))
        return w

    async def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS, raise_errors: bool = True) -> None:
        """Stops every worker (they drain) and waits for each, up to ``timeout`` seconds.

        Args:
            timeout: how long to wait for each worker to finish draining.
            raise_errors: raise the first error a worker's run ended with (or its timeout);
                ``False`` ignores them (a test that broke its workers on purpose).
        """
        running, self._running = self._running, []
        for w, _ in running:
            w.stop()
        errors: list[BaseException] = []
        for _, runner in running:
            try:
                await asyncio.wait_for(runner, timeout)
            except Exception as exc:
                errors.append(exc)
        if errors and raise_errors:
            raise errors[0]

    async def stop_one(self, w: Worker, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stops one worker started here (it drains) and waits for it, up to ``timeout``
        seconds; raises what its run ended with."""
        for i, (running, runner) in enumerate(self._running):
            if running is w:
                del self._running[i]
                w.stop()
                await asyncio.wait_for(runner, timeout)
                return

    async def __aenter__(self) -> Workers:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # After a failure inside the block, that failure is the one to see, not a worker's.
        await self.stop(raise_errors=exc_type is None)


@contextlib.asynccontextmanager
async def worker(url: str | None = None, *, workflows: Iterable[Callable[..., Any]] = (),
                 activities: Iterable[Callable[..., Any]] = (), namespace: str = "default",
                 **options: Any) -> AsyncIterator[Client]:
    """Runs a worker in this process for the ``async with`` block; yields a client.

    The worker claims work before the block begins and is stopped (drained) when it ends;
    the client is closed first. The database must be migrated (``cairn db migrate``), as
    for any worker's.

    Args:
        url: the database (``None``: ``CAIRN_DATABASE_URL``, else the embedded server).
        workflows: the ``@workflow.defn`` functions the worker runs.
        activities: the ``@activity.defn`` functions the worker runs.
        namespace: the namespace of both the worker and the client.
        **options: further :class:`~cairn.Worker` options, over :data:`TEST_WORKER_OPTIONS`.

    Yields:
        A :class:`~cairn.Client` connected to ``url``.
    """
    async with Workers(url, namespace=namespace) as workers:
        await workers.start(workflows=workflows, activities=activities, **options)
        async with await Client.connect(url, namespace=namespace) as client:
            yield client


# ---------------------------------------------------------------- a test environment that skips time


SKIP_POLL_SECONDS = 0.02  # how often the skipper looks at the database while it may skip


class WorkflowEnvironment:
    """A test environment for workflows, after Temporal's ``temporalio.testing.WorkflowEnvironment``.

    :meth:`start_time_skipping` gives one whose clock jumps: the workflows of its database run
    on a virtual clock (the database's time plus an offset), and while the test waits for a
    result through :attr:`client` (``handle.result()``, an update's or a query's answer) and
    nothing can run — no workflow task ready or in flight, no activity attempt leased or
    ready, no timer or schedule due, no query unanswered — the clock jumps to the earliest
    moment something falls due (a timer, a retry's backoff, a start delay, an execution
    timeout, a schedule's slot) and the workers are woken at once. A test of a 90-day sleep
    takes a second. Time never skips while an activity attempt runs: its deadlines are on
    the same clock. :meth:`sleep` moves the clock forward explicitly; within
    :meth:`auto_time_skipping_disabled` waiting for a result does not skip.
    :meth:`start_local` gives one on real time, with the same interface.

    Use it with ``async with``; run the workers in this process (:meth:`worker`, or
    :class:`~cairn.Worker` on :attr:`url`): the virtual clock is this process's, applied to
    every statement sent to that database from here. Give it a database of its own (a test's
    fresh one): the clock jumps for everything on it.

    Attributes:
        url: the database.
        client: a :class:`~cairn.Client` on it; waiting on it lets time skip.
        namespace: the namespace of the client and of the workers started by :meth:`worker`.
        supports_time_skipping: whether the clock jumps (:meth:`start_time_skipping`).
    """

    def __init__(self, url: str, client: Client, clock: _clock.VirtualClock | None, *, namespace: str,
                 auto_time_skipping: bool) -> None:
        self.url = url
        self.client = client
        self.namespace = namespace
        self.supports_time_skipping = clock is not None
        self._clock = clock
        self._auto = auto_time_skipping
        self._unlocked = 0  # time_skipping_unlocked() blocks in progress
        self._sleeping = 0  # sleep() calls in progress: they move the clock themselves
        self._workers = Workers(url, namespace=namespace)
        self._skipper: asyncio.Task[None] | None = None
        self._pool: db.Pool | None = None

    @classmethod
    async def start_time_skipping(cls, url: str | None = None, *, namespace: str = "default",
                                  auto_time_skipping: bool = True) -> WorkflowEnvironment:
        """An environment whose clock skips (see the class).

        Args:
            url: the database (``None``: ``CAIRN_DATABASE_URL``, else the embedded server),
                migrated as for any worker's.
            namespace: the namespace of the client and the workers.
            auto_time_skipping: skip while the test waits for a result (Temporal's default);
                ``False``: only :meth:`sleep` moves the clock.

        Raises:
            RuntimeError: the database has a time-skipping environment in this process already.
        """
        resolved, _ = await asyncio.to_thread(db.resolve_url, url)
        clock = await _clock.start(resolved)  # before anything is written: every statement reads it
        try:
            client = await Client.connect(resolved, namespace=namespace)
            env = cls(resolved, client, clock, namespace=namespace, auto_time_skipping=auto_time_skipping)
            env._pool = await db.open_pool(resolved, max_size=1)
        except BaseException:
            _clock.unregister(clock)
            raise
        env._skipper = asyncio.create_task(env._skip_loop(), name="cairn-time-skipper")
        return env

    @classmethod
    async def start_local(cls, url: str | None = None, *, namespace: str = "default") -> WorkflowEnvironment:
        """An environment on real time: the same interface, no clock of its own
        (:meth:`sleep` sleeps)."""
        resolved, _ = await asyncio.to_thread(db.resolve_url, url)
        client = await Client.connect(resolved, namespace=namespace)
        return cls(resolved, client, None, namespace=namespace, auto_time_skipping=False)

    async def __aenter__(self) -> WorkflowEnvironment:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await self.shutdown(raise_errors=exc_type is None)

    async def shutdown(self, *, raise_errors: bool = True) -> None:
        """Stops the workers started by :meth:`worker` (they drain) and the skipper, closes
        the client, and hands the database back to its own clock."""
        try:
            await self._workers.stop(raise_errors=raise_errors)
        finally:
            if self._skipper is not None:
                self._skipper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._skipper
            await self.client.close()
            if self._pool is not None:
                await self._pool.close()
            if self._clock is not None:
                _clock.unregister(self._clock)

    @contextlib.asynccontextmanager
    async def worker(self, *, workflows: Iterable[Callable[..., Any]] = (),
                     activities: Iterable[Callable[..., Any]] = (), **options: Any) -> AsyncIterator[Worker]:
        """Runs a worker in this process on the environment's database for the ``async with``
        block (it claims work before the block begins and drains when it ends).

        An activity is mocked by registering a replacement under its name:
        ``@activity.defn(name="compose_greeting") async def fake(...)``, passed in
        ``activities`` instead of the real one; workflows call it as before.

        Args:
            workflows: the ``@workflow.defn`` functions it runs.
            activities: the ``@activity.defn`` functions it runs.
            **options: further :class:`~cairn.Worker` options (``queues``, ...), over
                :data:`TEST_WORKER_OPTIONS`.
        """
        w = await self._workers.start(workflows=workflows, activities=activities, **options)
        try:
            yield w
        finally:
            await self._workers.stop_one(w)

    async def get_current_time(self) -> datetime:
        """The environment's time: the virtual clock's, else the database's."""
        if self._clock is not None:
            return self._clock.now()
        return await self.client._read(_runs.db_now)

    async def sleep(self, duration: timedelta | float) -> None:
        """Lets ``duration`` (seconds, or a timedelta) pass in the environment.

        With time skipping the clock moves forward through every moment something falls due
        on the way, in order, letting the workers do what is due at each before the next
        jump (timers fire at their own time, a schedule takes each slot), and stops at
        the end of ``duration``. Work that keeps running holds the clock to real time.
        Without time skipping it sleeps.
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        if self._clock is None:
            await asyncio.sleep(seconds)
            return
        target = self._clock.now() + timedelta(seconds=max(seconds, 0.0))
        self._sleeping += 1
        try:
            while True:
                state = await self._state()
                if state.now >= target:
                    return
                if not state.busy:
                    to = target if state.next_due is None or state.next_due > target else state.next_due
                    await self._jump(to)
                    if to == target:
                        return
                await asyncio.sleep(SKIP_POLL_SECONDS)
        finally:
            self._sleeping -= 1

    @contextlib.contextmanager
    def auto_time_skipping_disabled(self) -> Iterator[None]:
        """Within the block, waiting for a result does not skip time (:meth:`sleep` still does)."""
        auto, self._auto = self._auto, False
        try:
            yield
        finally:
            self._auto = auto

    @contextlib.contextmanager
    def time_skipping_unlocked(self) -> Iterator[None]:
        """Within the block time skips as while waiting for a result (for a test that waits
        on something else: a schedule's runs, a row in the database)."""
        self._unlocked += 1
        try:
            yield
        finally:
            self._unlocked -= 1

    # -- the skipper

    def _may_skip(self) -> bool:
        """Someone waits on :attr:`client` (its listener's waiters: a result, an update's
        outcome, a query's answer) or in :meth:`time_skipping_unlocked`, and no
        :meth:`sleep` is moving the clock."""
        return (self._auto and not self._sleeping
                and (self._unlocked > 0 or bool(self.client.listener.waiters)))

    async def _state(self) -> _clock.SkipState:
        assert self._pool is not None
        assert self._clock is not None
        async with self._pool.connection() as conn:
            return await _clock.skip_state(conn, self._clock)

    async def _jump(self, to: datetime) -> None:
        """Moves the clock to ``to`` and wakes the workers."""
        assert self._pool is not None
        assert self._clock is not None
        if self._clock.advance_to(to):
            async with self._pool.connection() as conn:
                await _clock.wake_workers(conn)

    async def _skip_loop(self) -> None:
        while True:
            try:
                if self._may_skip():
                    state = await self._state()
                    if not state.busy and state.next_due is not None and self._may_skip():
                        await self._jump(state.next_due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away for a moment: look again
                log.warning("time skipper: %s", exc)
            await asyncio.sleep(SKIP_POLL_SECONDS)
