"""One live workflow instance: runs workflow code on its deterministic loop, turns what
the code does into commands, and feeds it recorded events.

The same instance serves live execution and replay: :meth:`WorkflowInstance.activate`
takes one recorded batch (marker and input events) and returns the commands the code
produced for it. The replayer compares them with history; the worker records them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import traceback
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cairn.engine import history as h
from cairn.engine.history import Command, Event
from cairn.engine.local import LocalActivities, LocalActivityHandle, LocalOutcome, LocalRequest, set_returned
from cairn.engine.loop import WorkflowLoop
from cairn.engine.signals import Messages, signal_args
from cairn.errors import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    ContinueAsNewError,
    DeterminismViolation,
    NonDeterminismError,
    WorkflowFailure,
    WorkflowTaskFailed,
)
from cairn.options import Priority
from cairn.payloads import Signature, to_payload
from cairn.redaction import redact_value

log = logging.getLogger("cairn.workflow")


@dataclass(frozen=True)
class WorkflowInfo:
    """Identity of the running workflow (public as ``cairn.workflow.WorkflowInfo``)."""

    workflow_id: str
    run_id: str
    workflow_type: str
    queue: str
    namespace: str
    start_time: datetime
    # The run lifecycle: the parent run of a child workflow, the run this one continued
    # (continue-as-new), and the history length so far (kept current by :func:`info`).
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None
    continued_from: str | None = None
    history_length: int = 0
    # Where the run's tasks go in their queue (start_workflow's priority, 0023): what its
    # activities and children inherit unless given their own.
    priority: Priority | None = None

    def get_current_history_length(self) -> int:
        """Temporal's name for :attr:`history_length`: the run's events so far, when
        ``workflow.info()`` was called (call it again for a newer count)."""
        return self.history_length

    def is_continue_as_new_suggested(self) -> bool:
        """Whether the history has passed the length at which Cairn advises continuing as
        new (``CAIRN_WARN_HISTORY_EVENTS``, 10,000 events by default; workflow tasks fail
        past ``CAIRN_MAX_HISTORY_EVENTS``). Derived from the history, so replay sees the same
        answer at the same point (with the same setting)."""
        return self.history_length > h.WARN_HISTORY_EVENTS


@dataclass(frozen=True)
class WorkflowDefinition:
    """A registered workflow function (made by ``@cairn.workflow.defn``)."""

    name: str
    fn: Callable[..., Coroutine[Any, Any, Any]]
    signature: Signature


# Exceptions that mean the workflow code is broken, not that the workflow failed: they
# fail the workflow *task*, which is retried with backoff until a fixed deployment runs
# it, and leave history untouched (the Temporal default, narrowed to obvious bugs).
BUG_EXCEPTIONS: tuple[type[BaseException], ...] = (
    NonDeterminismError, DeterminismViolation, TypeError, AttributeError, NameError,
    ImportError, SyntaxError, NotImplementedError, RecursionError,
)


def is_bug(exc: BaseException) -> bool:
    """Whether an exception means broken code (also inside a TaskGroup's ExceptionGroup)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(BUG_EXCEPTIONS) is not None
    return isinstance(exc, BUG_EXCEPTIONS)


def failure_of(exc: BaseException) -> dict[str, Any]:
    """The JSON form of an exception as recorded in history: type, message, details, stack."""
    if isinstance(exc, WorkflowFailure):
        out = exc.to_failure()
    else:
        out = {"type": type(exc).__name__, "message": str(exc), "details": None}
    if isinstance(exc, NonDeterminismError):
        out["details"] = {"seq": exc.seq, "expected": exc.expected, "produced": exc.produced}
    if isinstance(exc, ApplicationError) and exc.non_retryable:
        out["non_retryable"] = True
    stack = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=8)
    out["stack"] = "".join(stack)[-4000:]
    # An error text may quote a configured API key (a provider echoing it): never record it.
    return redact_value(out)  # type: ignore[no-any-return]


# How cancelling an activity's handle treats the activity (Temporal's three types).
TRY_CANCEL = "try_cancel"
WAIT_CANCELLATION_COMPLETED = "wait_cancellation_completed"
ABANDON = "abandon"
CANCELLATION_TYPES = (TRY_CANCEL, WAIT_CANCELLATION_COMPLETED, ABANDON)


class ActivityHandle(asyncio.Future[Any]):
    """A scheduled activity: await it for the result, or cancel it.

    What cancelling does depends on the activity's cancellation type:

    - ``try_cancel`` (default): records an ``ActivityCancelRequested`` command and resolves
      with ``CancelledError`` at once; the activity task is dropped and a running attempt
      is told through its lease renewal.
    - ``wait_cancellation_completed``: records ``ActivityCancelRequested`` (with
      ``cancellation_type``) but stays pending until the activity has stopped: it resolves
      with ``CancelledError`` on the ``ActivityCancelled`` event, or with the outcome if the
      activity finished anyway. ``cancel()`` returns False meanwhile (a task awaiting the
      handle is cancelled when it resolves).
    - ``abandon``: resolves with ``CancelledError`` at once and records nothing; the
      activity runs on and its outcome is ignored.
    """

    def __init__(self, instance: WorkflowInstance, seq: int, name: str, returns: Any,
                 cancellation_type: str = TRY_CANCEL) -> None:
        super().__init__(loop=instance.loop)
        self.seq = seq
        self.activity = name
        self.cancellation_type = cancellation_type
        self._instance = instance
        self._returns = returns
        self._cancel_sent = False
        self._cancel_msg: Any = None

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        inst = self._instance
        if self.cancellation_type == WAIT_CANCELLATION_COMPLETED and not inst.closed:
            if not self._cancel_sent:
                self._cancel_sent = True
                self._cancel_msg = msg
                inst.cancel_activity(self.seq, wait=True)
            return False  # resolves when the ActivityCancelled (or an outcome) event arrives
        if self.cancellation_type == ABANDON:
            inst._activities.pop(self.seq, None)
        else:
            inst.cancel_activity(self.seq)
        return super().cancel(msg)

    def _resolve(self, event: Event) -> None:
        if self.done():
            return
        if event.type == h.ACTIVITY_CANCELLED:
            super().cancel(self._cancel_msg)
            return
        if event.type == h.ACTIVITY_COMPLETED:
            set_returned(self, self._returns, event.data.get("result"))
            return
        failure = event.data.get("failure") or {}
        cause = ApplicationError(
            str(failure.get("message", "")),
            type=str(failure.get("type") or "Error"),
            details=failure.get("details"),
            non_retryable=bool(failure.get("non_retryable")),
        )
        cause.stack = failure.get("stack") or None  # the activity's own traceback, kept for the caller
        self.set_exception(ActivityError(
            f"activity {self.activity} (seq {self.seq}) failed: {cause.type}: {cause.message}",
            cause=cause, activity=self.activity, seq=self.seq,
            attempts=int(event.data.get("attempts") or 0),
            retry_state=str(event.data.get("retry_state") or ""),
        ))


class ChildWorkflowHandle(asyncio.Future[Any]):
    """A child workflow run: await it for its result, or cancel it.

    ``workflow_id`` is known at once, ``run_id`` once the child has started. Cancelling the
    handle records a ``ChildWorkflowCancelRequested`` command, which puts a cancel request
    into the child's inbox; the handle resolves with ``CancelledError`` at once (like an
    activity handle), whatever the child then does.
    """

    def __init__(self, instance: WorkflowInstance, seq: int, workflow_id: str, workflow_type: str,
                 returns: Any) -> None:
        super().__init__(loop=instance.loop)
        self.seq = seq
        self.workflow_id = workflow_id
        self.workflow_type = workflow_type
        self.run_id: str | None = None
        # Resolved by ChildWorkflowStarted (or failed by ChildWorkflowStartFailed).
        self.started: asyncio.Future[None] = instance.loop.create_future()
        self._instance = instance
        self._returns = returns

    def cancel(self, msg: Any = None) -> bool:
        if not self.done():
            self._instance.cancel_child(self.seq)
        if not self.started.done():
            self.started.cancel(msg)
        return super().cancel(msg)

    def _resolve(self, event: Event) -> None:
        data = event.data
        if data.get("run_id") and self.run_id is None:
            self.run_id = str(data["run_id"])
        if event.type == h.CHILD_WORKFLOW_STARTED:
            if not self.started.done():
                self.started.set_result(None)
            return
        if event.type == h.CHILD_WORKFLOW_START_FAILED:
            failure = data.get("failure") or {}
            error = self._error(failure, "not_started",
                                f"child workflow {self.workflow_id!r} could not start: {failure.get('message')}")
            if not self.started.done():
                self.started.set_exception(error)
            if not self.done():
                self.set_exception(error)
            return
        if not self.started.done():
            self.started.set_result(None)
        if self.done():
            return
        if event.type == h.CHILD_WORKFLOW_COMPLETED:
            set_returned(self, self._returns, data.get("result"))
            return
        failure = data.get("failure") or {}
        status = str(data.get("status") or "failed")
        self.set_exception(self._error(failure, status, (
            f"child workflow {self.workflow_id!r} ({self.workflow_type}, seq {self.seq}) "
            f"{status.replace('_', ' ')}: {failure.get('type')}: {failure.get('message')}")))

    def _error(self, failure: dict[str, Any], status: str, message: str) -> ChildWorkflowError:
        cause = ApplicationError(str(failure.get("message", "")), type=str(failure.get("type") or "Error"),
                                 details=failure.get("details"))
        return ChildWorkflowError(message, cause=cause, workflow_id=self.workflow_id, run_id=self.run_id,
                                  seq=self.seq, status=status)


class WorkflowInstance:
    """Workflow code plus its deterministic loop and command state (see module docstring)."""

    def __init__(self, definition: WorkflowDefinition, info: WorkflowInfo, args: list[Any],
                 started: dict[str, Any] | None = None) -> None:
        self.definition = definition
        self.info = info
        self.args = args
        # AbstractEventLoop's unimplemented methods raise NotImplementedError at run time;
        # mypy counts them as abstract.
        self.loop = WorkflowLoop(self)  # type: ignore[abstract]
        self.now_ts = info.start_time.timestamp()
        self.last_seq = 1
        self.replaying = False
        # Seeded from WorkflowStarted's "seed" when a reset carried the old run's seed over,
        # else from the run id: the same values on every replay either way.
        # Made on first use: a Mersenne Twister is 2.5 KB, most of a cached instance's memory,
        # and most workflows never ask for one.
        self._seed = uuid.UUID(str((started or {}).get("seed") or info.run_id)).int
        self._random: random.Random | None = None
        # Start values plus the upserts made so far (workflow.search_attributes()).
        self.search_attributes: dict[str, Any] = dict((started or {}).get("search_attributes") or {})
        # The run's W3C trace context (cairn.telemetry): the parent of its task spans. Only
        # read by the worker, never matched on replay.
        self.trace: dict[str, Any] = dict((started or {}).get("trace") or {})
        self.cancel_requested = False
        self.closed = False
        self._commands: list[Command] = []
        self._activities: dict[int, ActivityHandle] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_seqs: dict[int, int] = {}  # id(handle) -> seq
        self._children: dict[int, ChildWorkflowHandle] = {}
        self.children_started = 0  # the run has children: its close must apply their policy
        self._main: asyncio.Task[Any] | None = None
        # (exception, outcome) of each saga that compensated (cairn.saga): a failure caused
        # by one of these exceptions reports the compensations.
        self.saga_outcomes: list[tuple[BaseException, dict[str, Any]]] = []
        self.messages = Messages(self)  # signals, wait conditions, queries
        self.locals = LocalActivities(self)  # local activities (cairn.engine.local)
        # While replaying one batch: its recorded command events by seq (see replay());
        # None when the code runs live. workflow.patched() looks ahead in it.
        self._recorded: dict[int, Event] | None = None
        self._patches: dict[str, bool] = {}  # patch id -> the answer of patched(), per run
        # The first determinism violation of this activation (the guard in engine.loop): it
        # fails the workflow task even if the code swallowed the exception.
        self.violation: DeterminismViolation | None = None

    @property
    def started_code(self) -> bool:
        """The workflow function has been started (its first activation ran)."""
        return self._main is not None

    # -- driving

    def activate(self, marker: Event, inputs: list[Event]) -> list[Command]:
        """Delivers one batch and runs the code until it blocks; returns its commands.

        Raises:
            WorkflowTaskFailed: the code hit a bug (see ``BUG_EXCEPTIONS``).
        """
        if marker.type != h.WORKFLOW_TASK_STARTED:
            raise NonDeterminismError(marker.seq, h.WORKFLOW_TASK_STARTED, marker.type)
        self.now_ts = float(marker.data["time"])
        self.last_seq = inputs[-1].seq if inputs else marker.seq
        self._commands = []
        if self.closed:
            return []
        if self._main is None:
            self._main = self.loop.create_task(self._run_main(), name=f"workflow {self.info.workflow_id}")
        for event in inputs:
            self._apply(event)
        self._settle()
        if self._recorded is not None:  # replaying: local activities resolve from their markers
            while self.locals.resolve_recorded(self._recorded):
                self._settle()
            self.locals.check_replayed(self._recorded)
        return self._commands

    def local_requests(self) -> list[LocalRequest]:
        """The local activities the worker must run before this task is recorded."""
        return self.locals.requests()

    def resolve_local_activities(self, outcomes: list[LocalOutcome]) -> list[Command]:
        """Records the outcomes of the requests the worker ran (markers, see
        ``cairn.engine.local``) and runs the code until it blocks again; returns the
        commands this added to the activation's.

        Raises:
            WorkflowTaskFailed: the code hit a bug.
        """
        start = len(self._commands)
        self.locals.resolve(outcomes)
        self._settle()
        return self._commands[start:]

    def _settle(self) -> None:
        self.violation = None
        try:
            self.messages.settle()  # run_until_blocked, then the wait conditions
        except BaseException as exc:
            raise WorkflowTaskFailed(exc) from exc
        if self.violation is not None:
            # Caught and swallowed by the code (``except Exception``): still a bug.
            raise WorkflowTaskFailed(self.violation)
        self._check_main()

    async def _run_main(self) -> Any:
        args = self.definition.signature.validate_args(self.args, f"workflow {self.definition.name}")
        result = await self.definition.fn(*args)
        return to_payload(result)

    def _check_main(self) -> None:
        main = self._main
        failed = self.messages.handler_error
        if failed is not None and not self.closed:  # a signal handler raised
            if is_bug(failed):
                raise WorkflowTaskFailed(failed)
            self._close(h.WORKFLOW_FAILED, {"failure": failure_of(failed)})
            return
        if main is None or not main.done() or self.closed:
            return
        if main.cancelled():
            if self.cancel_requested:
                self._close(h.WORKFLOW_CANCELLED, {})
            else:
                self._close(h.WORKFLOW_FAILED, {"failure": {
                    "type": "CancelledError", "details": None,
                    "message": "the workflow's main coroutine was cancelled without a cancel request",
                }})
            return
        exc = main.exception()
        if isinstance(exc, ContinueAsNewError):
            self._close(h.WORKFLOW_CONTINUED_AS_NEW, {
                "workflow_type": self.info.workflow_type, "input": exc.input, "queue": self.info.queue})
        elif exc is None:
            self._close(h.WORKFLOW_COMPLETED, {"result": main.result()})
        elif is_bug(exc):
            raise WorkflowTaskFailed(exc)
        else:
            failure = failure_of(exc)
            causes = _causes(exc)
            sagas = [outcome for raised, outcome in self.saga_outcomes if any(raised is c for c in causes)]
            if sagas:
                failure["sagas"] = sagas
            self._close(h.WORKFLOW_FAILED, {"failure": failure})

    def _close(self, event_type: str, data: dict[str, Any]) -> None:
        self._command(event_type, data)
        self.closed = True
        self.loop.close()

    def _apply(self, event: Event) -> None:
        data = event.data
        if event.type in (h.ACTIVITY_COMPLETED, h.ACTIVITY_FAILED, h.ACTIVITY_CANCELLED):
            # An abandoned (or cancelled) activity's outcome finds no handle: ignored.
            handle = self._activities.pop(int(data["activity_seq"]), None)
            if handle is not None:
                handle._resolve(event)
        elif event.type == h.TIMER_FIRED:
            seq = int(data["timer_seq"])
            timer = self._timers.pop(seq, None)
            if timer is not None:
                self._timer_seqs.pop(id(timer), None)
                self.loop.fire(timer)
        elif event.type == h.SIGNAL_RECEIVED:
            self.messages.deliver(str(data["name"]), signal_args(data))
        elif event.type == h.UPDATE_ACCEPTED:
            self.messages.deliver_update(str(data["update_id"]), str(data["name"]), list(data.get("args") or []))
        elif event.type == h.CANCEL_REQUESTED:
            if not self.cancel_requested and self._main is not None:
                self.cancel_requested = True
                self._main.cancel(data.get("reason") or "cancel requested")
        elif event.type in h.CHILD_EVENTS:
            child = self._children.get(int(data["child_seq"]))
            if child is not None:
                if event.type != h.CHILD_WORKFLOW_STARTED:
                    del self._children[child.seq]
                child._resolve(event)
        else:
            raise NonDeterminismError(event.seq, "an input event", event.type)

    # -- commands, called by the authoring API while the code runs

    def _command(self, event_type: str, data: dict[str, Any]) -> int:
        if self.messages.querying:
            raise DeterminismViolation(f"a query handler must be read-only, but it tried to record {event_type}")
        if self.closed:
            raise DeterminismViolation("the workflow has already closed")
        if self._recorded is not None and not (event_type == h.MARKER_RECORDED and data.get("kind") == h.PATCH_MARKER):
            self._skip_patch_markers()
        self.last_seq += 1
        self._commands.append(Command(self.last_seq, event_type, data))
        return self.last_seq

    def schedule_activity(self, name: str, args: list[Any], options: dict[str, Any],
                          queue: str, returns: Any, tags: dict[str, Any] | None = None,
                          cancellation_type: str = TRY_CANCEL) -> ActivityHandle:
        data = {"activity_type": name, "queue": queue, "input": args, "options": options, **(tags or {})}
        if cancellation_type != TRY_CANCEL:  # absent means try_cancel, as in older histories
            data["cancellation_type"] = cancellation_type
        seq = self._command(h.ACTIVITY_SCHEDULED, data)
        handle = ActivityHandle(self, seq, name, returns, cancellation_type)
        self._activities[seq] = handle
        return handle

    def schedule_local_activity(self, name: str, args: list[Any], options: dict[str, Any],
                                returns: Any) -> LocalActivityHandle:
        """A local activity request: nothing is recorded until the worker has run it."""
        if self.messages.querying:
            raise DeterminismViolation("a query handler must be read-only, but it tried to run a local activity")
        if self.closed:
            raise DeterminismViolation("the workflow has already closed")
        return self.locals.schedule(name, args, options, returns)

    def cancel_activity(self, seq: int, *, wait: bool = False) -> None:
        """Records ``ActivityCancelRequested``; with ``wait`` the handle stays registered
        until the activity's ``ActivityCancelled`` (or outcome) event arrives."""
        handle = self._activities.get(seq) if wait else self._activities.pop(seq, None)
        if handle is not None and not self.closed:
            data: dict[str, Any] = {"activity_seq": seq}
            if wait:
                data["cancellation_type"] = WAIT_CANCELLATION_COMPLETED
            self._command(h.ACTIVITY_CANCEL_REQUESTED, data)

    # -- versioning

    def patched(self, patch_id: str, *, deprecated: bool = False) -> bool:
        """Whether the code should take the patched branch (see ``workflow.patched``).

        Live, records a patch marker and answers True. Replaying, answers True (and
        produces the marker) only if the batch's next recorded commands include that
        patch marker; otherwise False, recording nothing: the run started under the old
        code. The answer is memoized per patch id for the run.
        """
        known = self._patches.get(patch_id)
        if known is not None:
            return known
        use = True
        if self._recorded is not None:
            use = False
            seq = self.last_seq + 1
            # Look past markers of patches the code no longer asks about (tolerated).
            while (event := self._recorded.get(seq)) is not None and h.is_patch_marker(event):
                if event.data.get("patch_id") == patch_id:
                    self.last_seq = seq - 1
                    use = True
                    break
                seq += 1
        if use:
            self._command(h.MARKER_RECORDED, {"kind": h.PATCH_MARKER, "patch_id": patch_id, "deprecated": deprecated})
        self._patches[patch_id] = use
        return use

    def _skip_patch_markers(self) -> None:
        """Replaying: steps over recorded patch markers that no call asked for.

        A patch marker never changes workflow state, so a history that has one where the
        code no longer calls ``patched``/``deprecate_patch`` (the call was removed once no
        old runs remained) replays as if the marker were not there.
        """
        assert self._recorded is not None
        while (event := self._recorded.get(self.last_seq + 1)) is not None and h.is_patch_marker(event):
            self.last_seq += 1

    def start_child(self, workflow_type: str, workflow_id: str | None, args: list[Any], options: dict[str, Any],
                    returns: Any) -> ChildWorkflowHandle:
        """Records a ``ChildWorkflowScheduled`` command; the worker starts the child run in
        the same transaction. The default child workflow id is ``<workflow id>/<seq>``
        (``<workflow id>/<run id>/<seq>`` in a continued run, whose seqs restart)."""
        seq = self.last_seq + 1
        if workflow_id is None:
            prefix = self.info.workflow_id if self.info.continued_from is None \
                else f"{self.info.workflow_id}/{self.info.run_id}"
            workflow_id = f"{prefix}/{seq}"
        self._command(h.CHILD_WORKFLOW_SCHEDULED, {
            "workflow_type": workflow_type, "workflow_id": workflow_id, "input": args, **options})
        handle = ChildWorkflowHandle(self, seq, workflow_id, workflow_type, returns)
        self._children[seq] = handle
        self.children_started += 1
        return handle

    def cancel_child(self, seq: int) -> None:
        if self._children.pop(seq, None) is not None and not self.closed:
            self._command(h.CHILD_WORKFLOW_CANCEL_REQUESTED, {"child_seq": seq})

    def complete_update(self, update_id: str, *, result: Any = None, error: BaseException | None = None) -> None:
        """Records ``UpdateCompleted``: the handler's result, or its exception as a failure.
        Nothing once the run has closed (the caller learns that the run closed first)."""
        if self.closed:
            return
        data: dict[str, Any] = {"update_id": update_id}
        if error is None:
            data["result"] = result
        else:
            data["failure"] = failure_of(error)
        self._command(h.UPDATE_COMPLETED, data)

    @staticmethod
    def is_bug(exc: BaseException) -> bool:
        return is_bug(exc)

    def record_marker(self, data: dict[str, Any]) -> int:
        """Records a ``MarkerRecorded`` command (``data["kind"]`` says whose); returns its seq."""
        return self._command(h.MARKER_RECORDED, data)

    def upsert_search_attributes(self, values: dict[str, Any]) -> None:
        """Records an ``UpsertSearchAttributes`` command (validated JSON values; None removes)."""
        self._command(h.UPSERT_SEARCH_ATTRIBUTES, {"search_attributes": values})
        for key, value in values.items():
            if value is None:
                self.search_attributes.pop(key, None)
            else:
                self.search_attributes[key] = value

    def start_timer(self, handle: asyncio.TimerHandle, delay: float) -> None:
        fire_at = datetime.fromtimestamp(self.now_ts, UTC) + timedelta(seconds=delay)
        seq = self._command(h.TIMER_STARTED, {"duration": delay, "fire_at": fire_at.isoformat()})
        self._timers[seq] = handle
        self._timer_seqs[id(handle)] = seq

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        seq = self._timer_seqs.pop(id(handle), None)
        if seq is not None and self._timers.pop(seq, None) is not None and not self.closed:
            self._command(h.TIMER_CANCELLED, {"timer_seq": seq})

    def dispose(self) -> None:
        """Unwinds an evicted instance: cancels its coroutines, recording nothing."""
        if self.loop.is_closed():
            return
        self.closed = True  # further commands raise inside the unwinding code, not here
        self.replaying = True
        for task in self.loop.tasks():
            task.cancel()
        with contextlib.suppress(BaseException):
            self.loop.run_until_blocked()
        self.loop.close()

    # -- deterministic helpers

    @property
    def random(self) -> random.Random:
        """The run's generator (``workflow.random()``), seeded the same on every replay."""
        if self._random is None:
            self._random = random.Random(self._seed)
        return self._random

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.now_ts, UTC)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.random.getrandbits(128), version=4)


def _causes(exc: BaseException) -> list[BaseException]:
    """An exception and the chain of exceptions it was raised from or while handling."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and not any(e is seen for seen in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _with_links(info: WorkflowInfo, started: dict[str, Any]) -> WorkflowInfo:
    """The run's identity completed with its parent and predecessor runs, which its
    ``WorkflowStarted`` event records (so the worker and ``cairn replay`` agree)."""
    parent = started.get("parent") or {}
    return dataclasses.replace(
        info, parent_workflow_id=info.parent_workflow_id or parent.get("workflow_id"),
        parent_run_id=info.parent_run_id or parent.get("run_id"),
        continued_from=info.continued_from or started.get("continued_from"),
        priority=info.priority or Priority.from_json(started.get("priority")),
    )


def replay(definition: WorkflowDefinition, info: WorkflowInfo, events: list[Event],
           instance: WorkflowInstance | None = None) -> WorkflowInstance:
    """Replays recorded history through the code, checking each produced command.

    Args:
        definition: the workflow's current code.
        info: the run's identity.
        events: the history, starting at ``WorkflowStarted`` (or, with ``instance``, the
            events after what the instance has seen).
        instance: a live instance to continue instead of a new one.

    Raises:
        NonDeterminismError: the code produced a command other than the recorded one.
        WorkflowTaskFailed: the code hit a bug while replaying.
    """
    i = 0
    if instance is None:
        if not events or events[0].type != h.WORKFLOW_STARTED:
            raise NonDeterminismError(events[0].seq if events else 1, h.WORKFLOW_STARTED,
                                      events[0].type if events else None)
        instance = WorkflowInstance(definition, _with_links(info, events[0].data),
                                    list(events[0].data.get("input") or []), events[0].data)
        i = 1
    instance.replaying = True
    try:
        while i < len(events):
            marker = events[i]
            if marker.type in h.CLOSED_WITHOUT_CODE:
                break
            if marker.type != h.WORKFLOW_TASK_STARTED:
                raise NonDeterminismError(marker.seq, h.describe_event(marker), None)
            i += 1
            inputs = []
            while i < len(events) and events[i].type in h.INPUT_EVENTS:
                inputs.append(events[i])
                i += 1
            end = i
            while end < len(events) and events[end].type in h.COMMAND_EVENTS:
                end += 1
            # The batch's recorded commands, for workflow.patched() to look ahead in.
            instance._recorded = {e.seq: e for e in events[i:end]}
            for command in instance.activate(marker, inputs):
                # Recorded patch markers that no call asked for are skipped (see
                # WorkflowInstance._skip_patch_markers): the command's seq is past them.
                while i < end and h.is_patch_marker(events[i]) and events[i].seq < command.seq:
                    i += 1
                recorded = events[i] if i < len(events) else None
                if recorded is None or not command.matches(recorded):
                    if recorded is not None and recorded.type not in h.COMMAND_EVENTS:
                        recorded = None
                    raise NonDeterminismError(
                        command.seq, h.describe_event(recorded) if recorded else None, command.describe()
                    )
                i += 1
            while i < end and h.is_patch_marker(events[i]):
                i += 1
            if i < len(events) and events[i].type in h.COMMAND_EVENTS:
                raise NonDeterminismError(events[i].seq, h.describe_event(events[i]), None)
    finally:
        instance.replaying = False
        instance._recorded = None
    return instance
