"""A reset's plan: which events a new run copies from the old run's history, what its inbox
holds, and which activities and timers it re-creates (pure: the history alone decides; the
writes are :mod:`cairn.store.operators`'s, the call :mod:`cairn.client.operators`'s, and a
batch reset's :mod:`cairn.store.batches`')."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.errors import InputValidationError
from cairn.visibility import merge_upserts

__all__ = ["ResetPlan", "first_task_seq", "plan_reset", "task_seqs"]


@dataclass
class ResetPlan:
    """What a reset writes for the new run (computed from the old run's history alone)."""

    seq: int
    copied: list[Event]
    inbox: list[tuple[str, dict[str, Any]]]
    activities: list[dict[str, Any]] = field(default_factory=list)
    timers: list[dict[str, Any]] = field(default_factory=list)
    search_attributes: dict[str, Any] = field(default_factory=dict)


def task_seqs(events: list[Event]) -> list[int]:
    """The seqs a run can be reset to: those of its ``WorkflowTaskStarted`` events."""
    return [e.seq for e in events if e.type == h.WORKFLOW_TASK_STARTED]


def first_task_seq(events: list[Event]) -> int | None:
    """The seq of the run's first workflow task (Temporal's ``FirstWorkflowTask``), or None."""
    return next((e.seq for e in events if e.type == h.WORKFLOW_TASK_STARTED), None)


def plan_reset(events: list[Event], old_run_id: str, seq: int | None, *, reapply_signals: bool = True,
               pending_signals: list[dict[str, Any]] | None = None) -> ResetPlan:
    """Computes a reset of a run with history ``events`` to the task starting at ``seq``.

    Args:
        events: the old run's whole history.
        old_run_id: its run id (the seed of its randomness unless ``WorkflowStarted`` has one).
        seq: the seq of a ``WorkflowTaskStarted`` event; ``None`` for the last one.
        reapply_signals: re-deliver the signals received after that task.
        pending_signals: signals still in the old run's inbox (data of ``SignalReceived``).

    Raises:
        InputValidationError: ``seq`` does not start a workflow task (the valid seqs are named).
    """
    valid = task_seqs(events)
    if not valid:
        raise InputValidationError("the run has no workflow task yet: there is nothing to reset to")
    if seq is None:
        seq = valid[-1]
    if seq not in valid:
        shown = ", ".join(map(str, valid[:50])) + (", ..." if len(valid) > 50 else "")
        raise InputValidationError(
            f"seq {seq} does not start a workflow task (a WorkflowTaskStarted event); valid seqs: {shown}")
    by_seq = {e.seq: e for e in events}
    started = events[0]
    copied = [Event(started.seq, started.type,
                    {**started.data, "seed": str(started.data.get("seed") or old_run_id)}, started.at)]
    copied += [e for e in events[1:] if e.seq < seq]
    # The task's input events: the run of input events right after its marker.
    inputs: list[Event] = []
    i = seq + 1
    while i in by_seq and by_seq[i].type in h.INPUT_EVENTS:
        inputs.append(by_seq[i])
        i += 1
    inbox = [(e.type, e.data) for e in inputs]
    if reapply_signals:
        inbox += [(e.type, e.data) for e in events if e.type == h.SIGNAL_RECEIVED and e.seq >= i]
        inbox += [(h.SIGNAL_RECEIVED, d) for d in pending_signals or []]
    outcomes = {int(e.data["activity_seq"]) for e in [*copied, *inputs]
                if e.type in (h.ACTIVITY_COMPLETED, h.ACTIVITY_FAILED, h.ACTIVITY_CANCELLED)}
    cancel_requested = {int(e.data["activity_seq"]) for e in copied if e.type == h.ACTIVITY_CANCEL_REQUESTED}
    resolved_acts = outcomes | cancel_requested
    # A wait_cancellation_completed activity whose cancellation had not completed: the
    # old run's end stopped it, so the new run is told it stopped.
    inbox += [(h.ACTIVITY_CANCELLED, {"activity_seq": e.seq, "attempt": 0, "started": False}) for e in copied
              if e.type == h.ACTIVITY_SCHEDULED and e.seq in cancel_requested - outcomes
              and e.data.get("cancellation_type") == "wait_cancellation_completed"]
    resolved_timers = {int(e.data["timer_seq"]) for e in [*copied, *inputs]
                       if e.type in (h.TIMER_FIRED, h.TIMER_CANCELLED)}
    inbox += _orphaned_children(events, [*copied, *inputs])
    attrs: dict[str, Any] = dict(started.data.get("search_attributes") or {})
    plan = ResetPlan(seq, copied, inbox)
    for e in copied:
        if e.type == h.ACTIVITY_SCHEDULED and e.seq not in resolved_acts:
            plan.activities.append({"seq": e.seq, "activity_type": e.data["activity_type"], "queue": e.data["queue"],
                                    "input": e.data.get("input", []), "options": e.data.get("options", {})})
        elif e.type == h.TIMER_STARTED and e.seq not in resolved_timers:
            plan.timers.append({"seq": e.seq, "fire_at": e.data["fire_at"]})
        elif e.type == h.UPSERT_SEARCH_ATTRIBUTES:
            attrs = merge_upserts(attrs, e.data["search_attributes"])
    plan.search_attributes = attrs
    return plan


def _orphaned_children(events: list[Event], kept: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    """Input events for the child runs that were started before the reset point and had
    not finished by it: their outcomes go to the old run (their parent), which the reset
    terminates (a child with parent close policy ``terminate`` is terminated with it), so
    the new run is told that each such child is lost to it, deterministically, rather than
    waiting for it for ever. The workflow sees a ``ChildWorkflowError`` of type ``ParentReset``."""
    done = {int(e.data["child_seq"]) for e in kept
            if e.type in (h.CHILD_WORKFLOW_COMPLETED, h.CHILD_WORKFLOW_FAILED, h.CHILD_WORKFLOW_START_FAILED)}
    started = {int(e.data["child_seq"]) for e in kept if e.type == h.CHILD_WORKFLOW_STARTED}
    later = {int(e.data["child_seq"]): e.data for e in events if e.type == h.CHILD_WORKFLOW_STARTED}
    out: list[tuple[str, dict[str, Any]]] = []
    for e in kept:
        if e.type != h.CHILD_WORKFLOW_SCHEDULED or e.seq in done:
            continue
        failure = {"type": "ParentReset", "details": None,
                   "message": f"child workflow {e.data.get('workflow_id')!r} belongs to the run that was reset"}
        if e.seq not in started and e.seq not in later:
            out.append((h.CHILD_WORKFLOW_START_FAILED, {"child_seq": e.seq, "workflow_id": e.data.get("workflow_id"),
                                                        "failure": failure}))
            continue
        if e.seq not in started:
            out.append((h.CHILD_WORKFLOW_STARTED, later[e.seq]))
        out.append((h.CHILD_WORKFLOW_FAILED, {"child_seq": e.seq, "failure": failure}))
    return out
