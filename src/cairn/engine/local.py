"""Local activities: short activity functions the worker runs inside the workflow task, with
no ``activity_tasks`` row and no queue round trip (Temporal's local activities).

The engine's side only, no I/O. Workflow code calls ``workflow.start_local_activity``: the
call records nothing yet, it makes a *pending* request numbered by ``local_seq`` (1, 2, …
per run, in call order). Once the code is blocked, the worker runs every pending request
(``WorkflowInstance.local_requests``) and hands back one :class:`LocalOutcome` each
(``WorkflowInstance.resolve_local_activities``): each becomes a ``MarkerRecorded {kind:
"local_activity"}`` command, in ``local_seq`` order, and the code runs on until blocked;
repeat until nothing is pending. The markers are recorded with the task's other commands,
in its one transaction.

A marker carries ``local_seq``, ``activity_type``, ``attempts`` and either ``result``,
``failure`` (final: the handle raises ``ActivityError``) or ``backoff`` with the last
``failure`` (the next retry waits longer than the local retry threshold, or the task ran
out of time for local work: a durable timer of ``backoff`` seconds follows the marker, and
the request is pending again, with its next attempt number, in the task after it fires).

Replaying, nothing runs: once the code is blocked, pending requests are resolved from the
recorded markers that come next in the batch, in the same groups as when they were recorded
(every request pending at that point got its marker then). A request the history has no
marker for at that point, or a marker of another activity type, is a
``NonDeterminismError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cairn.engine import history as h
from cairn.errors import ActivityError, ApplicationError, NonDeterminismError
from cairn.payloads import unref

if TYPE_CHECKING:
    from cairn.engine.instance import WorkflowInstance

# A local activity runs while its workflow task holds its claim (a row lock, in an open
# transaction that the worker's sessions end after 60 s idle): one attempt may last at most
# LOCAL_ATTEMPT_MAX_SECONDS, and a claimed batch spends at most LOCAL_BUDGET_SECONDS running
# local activities before the rest wait for a later task (a backoff marker and a timer).
LOCAL_ATTEMPT_MAX_SECONDS = 20.0
LOCAL_BUDGET_SECONDS = 20.0
# Retries that wait longer than this happen in a later task, after a durable timer
# (Temporal's local_retry_threshold, whose default there is 60 s).
DEFAULT_LOCAL_RETRY_THRESHOLD_SECONDS = 1.0
# A backoff timer is a durable timer: it must last more than nothing (a zero delay would
# run the callback at once, recording no timer).
MIN_BACKOFF_SECONDS = 0.001


@dataclass(frozen=True)
class LocalRequest:
    """A pending local activity, for the worker to run."""

    local_seq: int
    activity_type: str
    args: list[Any]
    options: dict[str, Any]  # timeouts, retry_policy, local_retry_threshold (seconds)
    attempt: int  # the number of the attempt to run next (1 first)
    scheduled_at: float  # workflow time of the call: the schedule-to-close clock starts there


@dataclass(frozen=True)
class LocalOutcome:
    """What running a local activity came to: a result, a final failure, or a backoff."""

    local_seq: int
    attempts: int  # attempts run so far, all tasks included
    result: Any = None
    failure: dict[str, Any] | None = None
    backoff: float | None = None  # seconds to a retry in a later task (failure: the last one's)
    retry_state: str | None = None  # why a final failure is final

    def marker(self, activity_type: str) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": h.LOCAL_ACTIVITY_MARKER, "local_seq": self.local_seq,
                                "activity_type": activity_type, "attempts": self.attempts}
        if self.backoff is not None:
            data["backoff"] = self.backoff
            data["failure"] = self.failure
        elif self.failure is not None:
            data["failure"] = self.failure
            data["retry_state"] = self.retry_state or ""
        else:
            data["result"] = self.result
        return data


def set_returned(future: asyncio.Future[Any], returns: Callable[[Any], Any] | None, value: Any) -> None:
    """Resolves a handle with a recorded result, validated by ``returns`` (the function's
    return annotation) when given: a result that fails validation raises in the workflow."""
    try:
        out = returns(value) if returns else value
    except Exception as exc:
        future.set_exception(exc)
        return
    future.set_result(out)


def is_local_marker(event: h.Event | None) -> bool:
    return event is not None and event.type == h.MARKER_RECORDED \
        and event.data.get("kind") == h.LOCAL_ACTIVITY_MARKER


class LocalActivityHandle(asyncio.Future[Any]):
    """A local activity: await it for the result (or ``ActivityError``), or cancel it.

    Cancelling drops a pending request (nothing is recorded for it) or the backoff timer
    of one waiting to be retried (``TimerCancelled``); the handle resolves with
    ``CancelledError`` at once.
    """

    def __init__(self, locals_: LocalActivities, local_seq: int, name: str, args: list[Any],
                 options: dict[str, Any], returns: Callable[[Any], Any] | None, scheduled_at: float) -> None:
        super().__init__(loop=locals_.instance.loop)
        self.local_seq = local_seq
        self.activity = name
        self.args = args
        self.options = options
        self.attempt = 1
        self.scheduled_at = scheduled_at
        self._locals = locals_
        self._returns = returns
        self._timer: asyncio.TimerHandle | None = None

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        self._locals.drop(self)
        return super().cancel(msg)

    def request(self) -> LocalRequest:
        return LocalRequest(self.local_seq, self.activity, self.args, self.options, self.attempt, self.scheduled_at)

    def _resolve(self, data: dict[str, Any]) -> None:
        if self.done():
            return
        failure = data.get("failure")
        if failure is None:
            set_returned(self, self._returns, data.get("result"))
            return
        cause = ApplicationError(str(failure.get("message", "")), type=str(failure.get("type") or "Error"),
                                 details=failure.get("details"), non_retryable=bool(failure.get("non_retryable")))
        self.set_exception(ActivityError(
            f"local activity {self.activity} (local seq {self.local_seq}) failed: {cause.type}: {cause.message}",
            cause=cause, activity=self.activity, seq=self.local_seq,
            attempts=int(data.get("attempts") or 0), retry_state=str(data.get("retry_state") or ""),
        ))


class LocalActivities:
    """An instance's local activities: pending requests, backoff timers, markers."""

    def __init__(self, instance: WorkflowInstance) -> None:
        self.instance = instance
        self._next = 0
        self._pending: dict[int, LocalActivityHandle] = {}  # local_seq -> handle, waiting to run
        self._backing_off: dict[int, LocalActivityHandle] = {}  # waiting for their backoff timer

    def schedule(self, name: str, args: list[Any], options: dict[str, Any],
                 returns: Callable[[Any], Any] | None) -> LocalActivityHandle:
        self._next += 1
        handle = LocalActivityHandle(self, self._next, name, args, options, returns, self.instance.now_ts)
        self._pending[handle.local_seq] = handle
        return handle

    def requests(self) -> list[LocalRequest]:
        """The requests the worker must run now (none once the run has closed)."""
        if self.instance.closed:
            return []
        return [self._pending[s].request() for s in sorted(self._pending)]

    def drop(self, handle: LocalActivityHandle) -> None:
        self._pending.pop(handle.local_seq, None)
        if self._backing_off.pop(handle.local_seq, None) is not None and handle._timer is not None:
            handle._timer.cancel()  # records TimerCancelled (the loop's timer hook)
            handle._timer = None

    def resolve(self, outcomes: list[LocalOutcome]) -> None:
        """Records the worker's outcomes as markers (``local_seq`` order) and applies them."""
        for outcome in sorted(outcomes, key=lambda o: o.local_seq):
            handle = self._pending.pop(outcome.local_seq, None)
            if handle is None:
                continue
            data = outcome.marker(handle.activity)
            self.instance.record_marker(data)
            self._apply(handle, data)

    def resolve_recorded(self, recorded: dict[int, h.Event]) -> bool:
        """Replaying: resolves pending requests from the markers recorded next in the batch
        (each produced again as a command, with the activity type the code asks for, so a
        changed type fails the replay's comparison). Returns whether any was resolved."""
        inst = self.instance
        resolved = False
        while self._pending and not inst.closed:
            event = recorded.get(_next_seq(recorded, inst.last_seq))
            if not is_local_marker(event):
                break
            assert event is not None
            handle = self._pending.pop(int(event.data.get("local_seq") or 0), None)
            if handle is None:
                break
            data = {**event.data, "activity_type": handle.activity}
            inst.record_marker(data)
            self._apply(handle, data)
            resolved = True
        return resolved

    def check_replayed(self, recorded: dict[int, h.Event]) -> None:
        """Replaying, at the end of a batch: a request still pending had no marker.

        Raises:
            NonDeterminismError: the code asks for a local activity the history did not run.
        """
        inst = self.instance
        if not self._pending or inst.closed:
            return
        handle = self._pending[min(self._pending)]
        seq = _next_seq(recorded, inst.last_seq)
        event = recorded.get(seq)
        produced = h.Command(seq, h.MARKER_RECORDED, {"kind": h.LOCAL_ACTIVITY_MARKER, "local_seq": handle.local_seq,
                                                      "activity_type": handle.activity}).describe()
        raise NonDeterminismError(seq, h.describe_event(event) if event is not None else None, produced)

    def _apply(self, handle: LocalActivityHandle, data: dict[str, Any]) -> None:
        backoff = data.get("backoff")
        if backoff is None:
            # A stored result: the marker keeps the reference, the code gets the value.
            handle._resolve(unref(data))
            return
        handle.attempt = int(data.get("attempts") or 0) + 1
        self._backing_off[handle.local_seq] = handle
        handle._timer = self.instance.loop.call_later(max(float(backoff), MIN_BACKOFF_SECONDS), self._retry, handle)

    def _retry(self, handle: LocalActivityHandle) -> None:
        handle._timer = None
        if self._backing_off.pop(handle.local_seq, None) is not None and not handle.done():
            self._pending[handle.local_seq] = handle


def _next_seq(recorded: dict[int, h.Event], last_seq: int) -> int:
    """The seq of the next recorded command, past patch markers no call asked for (the
    instance steps over them the same way when it records its next command)."""
    seq = last_seq + 1
    while (event := recorded.get(seq)) is not None and h.is_patch_marker(event):
        seq += 1
    return seq
