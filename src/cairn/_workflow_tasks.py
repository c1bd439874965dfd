"""What a workflow task's code produced, ready to be recorded with its batch (shared by
:class:`cairn.worker.Worker`'s claimed batches and its fast path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span

from cairn import _lifecycle, _telemetry
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.instance import WorkflowInstance

# Events that need statements of their own after record_workflow_tasks (_record_extras).
EXTRA_EVENTS = frozenset({h.TIMER_STARTED, h.TIMER_CANCELLED, h.ACTIVITY_CANCEL_REQUESTED,
                          h.UPSERT_SEARCH_ATTRIBUTES})


@dataclass
class Prepared:
    """A workflow task whose code has run, waiting to be recorded with its batch."""

    task: dict[str, Any]
    inst: WorkflowInstance
    events: list[Event]
    inbox_ids: list[int]
    family: bool  # the run closes and has a parent or children (see cairn._lifecycle)
    began: float
    began_ns: int
    close_status: str | None  # the status the events close the run with, if they do
    wait_cancels: list[int]  # activities cancelled with wait_cancellation_completed
    plain: bool  # record_workflow_tasks records it all (no timers, cancels, children, ...)
    span: Span | None = None

    @classmethod
    def of(cls, task: dict[str, Any], inst: WorkflowInstance, events: list[Event], inbox_ids: list[int],
           began: float, began_ns: int) -> Prepared:
        family = inst.closed and (inst.info.parent_run_id is not None or inst.children_started > 0)
        wait_cancels = [ev.data["activity_seq"] for ev in events if ev.type == h.ACTIVITY_CANCEL_REQUESTED
                        and ev.data.get("cancellation_type") == "wait_cancellation_completed"]
        plain = not any(ev.type in EXTRA_EVENTS for ev in events) and not _lifecycle.has_commands(events, family)
        close_status = next((h.TERMINAL_EVENTS[e.type] for e in events if e.type in h.TERMINAL_EVENTS), None)
        return cls(task, inst, events, inbox_ids, family, began, began_ns, close_status, wait_cancels, plain)


def count_runs(tasks: list[dict[str, Any]]) -> None:
    """Counts runs started and closed by committed workflow tasks (never by rolled-back ones)."""
    for task in tasks:
        started, workflow_type, closed = task.pop("_metrics", (None, None, None))
        if started:
            _telemetry.workflows_started.add(1, {"workflow_type": workflow_type})
        if closed:
            _telemetry.workflows_closed.add(1, {"workflow_type": workflow_type, "status": closed})
