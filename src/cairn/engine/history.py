"""The history model: event types, and the commands that workflow code produces.

Each command has a dual history event of the same name. A workflow task appends one
batch: a ``WorkflowTaskStarted`` marker (the batch boundary, carrying workflow time), the
input events moved from the inbox, then the command events the code produced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cairn.errors import HistoryTooLong
from cairn.payloads import jsonb_form

# The history-length warnings keep the logger name they have always had (logging set-ups filter on it).
log = logging.getLogger("cairn.limits")

# Written when the run is created; always seq 1.
WORKFLOW_STARTED = "WorkflowStarted"
# The batch boundary: what follows, up to the first command event, is one activation.
WORKFLOW_TASK_STARTED = "WorkflowTaskStarted"

# Input events: arrive through the inbox, delivered to the code as one batch.
ACTIVITY_COMPLETED = "ActivityCompleted"
ACTIVITY_FAILED = "ActivityFailed"
TIMER_FIRED = "TimerFired"
CANCEL_REQUESTED = "CancelRequested"
# A signal sent to the run (data {"name": str, "payload": <json>}): client.signal.
SIGNAL_RECEIVED = "SignalReceived"
# A cancelled activity has stopped (cancellation type wait_cancellation_completed): data
# {"activity_seq", "attempt", "started"}.
ACTIVITY_CANCELLED = "ActivityCancelled"
# Child workflow outcomes, written into the parent's inbox (see cairn.store.lifecycle).
CHILD_WORKFLOW_STARTED = "ChildWorkflowStarted"
CHILD_WORKFLOW_START_FAILED = "ChildWorkflowStartFailed"
CHILD_WORKFLOW_COMPLETED = "ChildWorkflowCompleted"
CHILD_WORKFLOW_FAILED = "ChildWorkflowFailed"
CHILD_EVENTS = frozenset({
    CHILD_WORKFLOW_STARTED, CHILD_WORKFLOW_START_FAILED, CHILD_WORKFLOW_COMPLETED, CHILD_WORKFLOW_FAILED,
})
# An update the run's validator accepted (data {"update_id", "name", "args"}): its handler
# runs. It reaches the inbox as UPDATE_REQUESTED (same data); the worker validates it
# there, and only an accepted one becomes this event (a rejected one leaves no event).
UPDATE_ACCEPTED = "UpdateAccepted"
UPDATE_REQUESTED = "UpdateRequested"
INPUT_EVENTS = frozenset({
    ACTIVITY_COMPLETED, ACTIVITY_FAILED, TIMER_FIRED, CANCEL_REQUESTED, SIGNAL_RECEIVED, ACTIVITY_CANCELLED,
    UPDATE_ACCEPTED, *CHILD_EVENTS,
})
# Inbox-only events that close a run without running its code (the worker handles them;
# they never reach history): a parent close policy's termination, and the execution
# timeout's timer (TimerFired with the reserved timer seq 0).
TERMINATE_REQUESTED = "TerminateRequested"
EXECUTION_TIMER_SEQ = 0

# Command events: produced by the code, matched on replay.
ACTIVITY_SCHEDULED = "ActivityScheduled"
ACTIVITY_CANCEL_REQUESTED = "ActivityCancelRequested"
TIMER_STARTED = "TimerStarted"
TIMER_CANCELLED = "TimerCancelled"
WORKFLOW_COMPLETED = "WorkflowCompleted"
WORKFLOW_FAILED = "WorkflowFailed"
WORKFLOW_CANCELLED = "WorkflowCancelled"
# A note the code leaves in history (data {"kind": ...}), e.g. a saga's progress; the
# worker only appends it. Matched on replay like any command.
MARKER_RECORDED = "MarkerRecorded"
# The workflow changed its search attributes (data {"search_attributes": {key: value or
# None to remove}}); the worker applies it to cairn.runs in the task's transaction.
UPSERT_SEARCH_ATTRIBUTES = "UpsertSearchAttributes"
# The run lifecycle: start a child run, ask it to cancel, close this run and start the
# next one of its chain.
CHILD_WORKFLOW_SCHEDULED = "ChildWorkflowScheduled"
CHILD_WORKFLOW_CANCEL_REQUESTED = "ChildWorkflowCancelRequested"
WORKFLOW_CONTINUED_AS_NEW = "WorkflowContinuedAsNew"
# An update's handler returned (data {"update_id", "result"}) or raised (data
# {"update_id", "failure"}): the caller gets it.
UPDATE_COMPLETED = "UpdateCompleted"
COMMAND_EVENTS = frozenset({
    UPDATE_COMPLETED, ACTIVITY_SCHEDULED, ACTIVITY_CANCEL_REQUESTED, TIMER_STARTED, TIMER_CANCELLED,
    WORKFLOW_COMPLETED, WORKFLOW_FAILED, WORKFLOW_CANCELLED, MARKER_RECORDED,
    UPSERT_SEARCH_ATTRIBUTES, CHILD_WORKFLOW_SCHEDULED, CHILD_WORKFLOW_CANCEL_REQUESTED, WORKFLOW_CONTINUED_AS_NEW,
})

# Written by an operator (terminate), not by workflow code.
WORKFLOW_TERMINATED = "WorkflowTerminated"
# Written by the worker when the execution timeout fires; no code runs.
WORKFLOW_TIMED_OUT = "WorkflowTimedOut"
# Events after which a history has nothing the code produced: replay stops there.
CLOSED_WITHOUT_CODE = frozenset({WORKFLOW_TERMINATED, WORKFLOW_TIMED_OUT})

TERMINAL_EVENTS = {
    WORKFLOW_COMPLETED: "completed",
    WORKFLOW_FAILED: "failed",
    WORKFLOW_CANCELLED: "cancelled",
    WORKFLOW_TERMINATED: "terminated",
    WORKFLOW_CONTINUED_AS_NEW: "continued_as_new",
    WORKFLOW_TIMED_OUT: "timed_out",
}

# The data keys that must match for a produced command to equal a recorded one.
_IDENTITY_KEYS = {
    ACTIVITY_SCHEDULED: ("activity_type",),
    ACTIVITY_CANCEL_REQUESTED: ("activity_seq",),
    TIMER_CANCELLED: ("timer_seq",),
    # Saga markers are told apart by kind/event, patch markers by kind/patch_id, local
    # activity markers by kind/local_seq/activity_type; a key a marker does not have is
    # None on both sides.
    MARKER_RECORDED: ("kind", "event", "patch_id", "local_seq", "activity_type"),
    UPSERT_SEARCH_ATTRIBUTES: ("search_attributes",),
    CHILD_WORKFLOW_SCHEDULED: ("workflow_type", "workflow_id"),
    CHILD_WORKFLOW_CANCEL_REQUESTED: ("child_seq",),
    WORKFLOW_CONTINUED_AS_NEW: ("workflow_type",),
    UPDATE_COMPLETED: ("update_id",),
}
# The marker kind of workflow.patched / workflow.deprecate_patch.
PATCH_MARKER = "patch"
SAGA_MARKER = "saga"  # the kind of the markers a saga records (cairn.saga)
# The kind of a local activity's marker (cairn.engine.local): its outcome, or a backoff.
LOCAL_ACTIVITY_MARKER = "local_activity"


def as_stored(value: Any) -> Any:
    """JSON data as it comes back from a ``jsonb`` column, for input events a worker hands
    to workflow code without the round trip (the speculated fast path): the code must see
    what a replay will read (``cairn.payloads.jsonb_form``: key order, numbers)."""
    return jsonb_form(value)


def is_patch_marker(event: Event, patch_id: str | None = None) -> bool:
    """Whether a recorded event is a patch marker (of ``patch_id``, if given)."""
    return (event.type == MARKER_RECORDED and event.data.get("kind") == PATCH_MARKER
            and (patch_id is None or event.data.get("patch_id") == patch_id))


@dataclass(frozen=True)
class Event:
    """One history event."""

    seq: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "type": self.type, "data": self.data}
        if self.at is not None:
            out["at"] = self.at.isoformat()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Event:
        at = raw.get("at")
        return cls(
            seq=int(raw["seq"]),
            type=str(raw["type"]),
            data=dict(raw.get("data") or {}),
            at=datetime.fromisoformat(at) if isinstance(at, str) else None,
        )


@dataclass(frozen=True)
class Command:
    """A decision of the workflow code; recorded as the event of the same type and seq."""

    seq: int
    type: str
    data: dict[str, Any]

    def describe(self) -> str:
        keys = _IDENTITY_KEYS.get(self.type, ())
        detail = ", ".join(f"{k}={self.data.get(k)!r}" for k in keys if self.data.get(k) is not None)
        return f"{self.type}({detail})" if detail else self.type

    def matches(self, event: Event) -> bool:
        if event.type != self.type or event.seq != self.seq:
            return False
        return all(event.data.get(k) == self.data.get(k) for k in _IDENTITY_KEYS.get(self.type, ()))

    def as_event(self) -> Event:
        return Event(self.seq, self.type, self.data)


def describe_event(event: Event) -> str:
    """A short name of a recorded command event, in the form of :meth:`Command.describe`."""
    return Command(event.seq, event.type, event.data).describe()


# ---------------------------------------------------------------- the history length limit
#
# Every cache miss replays the whole history, so a run that never ends (a loop of signals or
# timers) gets slower and heavier until it is continued as new. A warning at
# WARN_HISTORY_EVENTS; past MAX_HISTORY_EVENTS its workflow tasks fail (history untouched,
# backed off, shown by describe) with advice to continue as new, unless the task closes the
# run (completing, failing or continuing as new is always allowed).

WARN_HISTORY_EVENTS = int(os.environ.get("CAIRN_WARN_HISTORY_EVENTS", 10_000))
MAX_HISTORY_EVENTS = int(os.environ.get("CAIRN_MAX_HISTORY_EVENTS", 50_000))


def check_history_length(events: Sequence[Event], workflow_id: str, run_id: str, *,
                         limit: int | None = None, warn: int | None = None) -> HistoryTooLong | None:
    """The error to fail a workflow task with if its events take the history past the limit.

    Returns None when the task may be recorded (logging a warning past the warning mark).
    A task that closes the run is always allowed: it is the way out.
    """
    if not events:
        return None
    limit = MAX_HISTORY_EVENTS if limit is None else limit
    warn = WARN_HISTORY_EVENTS if warn is None else warn
    length = events[-1].seq
    if length <= warn:
        return None
    if length > limit and not any(e.type in TERMINAL_EVENTS for e in events):
        return HistoryTooLong(
            f"the history of {workflow_id!r} (run {run_id}) would reach {length} events, over the limit "
            f"of {limit} (CAIRN_MAX_HISTORY_EVENTS): continue-as-new advised "
            "(workflow.continue_as_new) to start a fresh history")
    log.warning("the history of %s (run %s) has %d events (limit %d): continue-as-new advised",
                workflow_id, run_id, length, limit)
    return None
