"""Operator actions on finished or stuck runs: reset (re-drive from a workflow task) and retry.

**Reset** (Temporal's reset, DBOS's fork) starts a new run of the same workflow id whose
history is the old run's history before the workflow task that starts at seq N, whose
inbox holds that task's input events, and which has a pending workflow task: the current
code replays the copied events and carries on from there. Whatever was pending at the
reset point (activities without an outcome, timers neither fired nor cancelled) is
re-created; signals the old run received later are re-delivered. The old seed of
``workflow.random()``/``uuid4()`` is carried over in the copied ``WorkflowStarted`` data,
so the copied events replay identically. An open old run is terminated in the same
transaction, under its workflow-task lock (the single-writer rule).

**Retry** starts a failed (cancelled, terminated, timed-out) run again from its original
input, as a new run of the same id, type, queue, search attributes and memo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cairn.client.handle import WorkflowHandle
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.errors import InputValidationError
from cairn.options import check_text, new_run_id
from cairn.store import operators as store
from cairn.store.operators import ResetPlan
from cairn.visibility import merge_upserts

if TYPE_CHECKING:
    from cairn.client.client import Client

__all__ = ["RETRYABLE_STATUSES", "ResetPlan", "plan_reset", "reset", "retry", "task_seqs"]

RETRYABLE_STATUSES = ("failed", "cancelled", "terminated", "timed_out")
MAX_REASON_LENGTH = 1000


def task_seqs(events: list[Event]) -> list[int]:
    """The seqs a run can be reset to: those of its ``WorkflowTaskStarted`` events."""
    return [e.seq for e in events if e.type == h.WORKFLOW_TASK_STARTED]


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


def _check_reason(reason: str) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
        raise InputValidationError(f"the reason must be a string of at most {MAX_REASON_LENGTH} characters")
    return check_text(reason, "the reason")


async def reset(client: Client, workflow_id: str, *, run_id: str | None = None, to_seq: int | None = None,
                to_last_task: bool = False, reason: str = "", reapply_signals: bool = True) -> WorkflowHandle:
    """Resets a run (see the module docstring) and returns a handle on the new run.

    Raises:
        InputValidationError: neither or both of ``to_seq``/``to_last_task``, or a seq that
            does not start a workflow task; nothing was written.
        WorkflowNotFound: no such run.
        WorkflowAlreadyStarted: another run of the workflow id is open.
    """
    if (to_seq is None) == (not to_last_task):
        raise InputValidationError("give exactly one of to_seq and to_last_task")
    if to_seq is not None and (isinstance(to_seq, bool) or not isinstance(to_seq, int) or to_seq < 1):
        raise InputValidationError(f"to_seq must be a positive integer, not {to_seq!r}")
    _check_reason(reason)
    row = await client._run_row(workflow_id, run_id)
    new_id = new_run_id()
    await store.reset(client.pool, row, new_id, lambda events, pending: plan_reset(
        events, row.run_id, to_seq, reapply_signals=reapply_signals, pending_signals=pending), reason=reason)
    return WorkflowHandle(client, row.workflow_id, new_id, None)


async def retry(client: Client, workflow_id: str, *, run_id: str | None = None) -> WorkflowHandle:
    """Starts a closed, unsuccessful run again from its original input, as a new run.

    The new run has the same workflow id, type, queue, start search attributes and memo,
    and fresh randomness; ``describe`` shows where it came from.

    Raises:
        InputValidationError: the run is running or completed; nothing was written.
        WorkflowNotFound: no such run.
        WorkflowAlreadyStarted: another run of the workflow id is open.
    """
    row = await client._run_row(workflow_id, run_id)
    if row.status not in RETRYABLE_STATUSES:
        raise InputValidationError(
            f"workflow {row.workflow_id!r} (run {row.run_id}) is {row.status}: only a "
            f"{', '.join(RETRYABLE_STATUSES[:-1])} or {RETRYABLE_STATUSES[-1]} run can be retried")
    new_id = new_run_id()
    await store.retry(client.pool, row, new_id)
    return WorkflowHandle(client, row.workflow_id, new_id, None)
