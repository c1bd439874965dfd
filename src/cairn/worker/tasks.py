"""What a workflow task's code produced, ready to be recorded with its batch (shared by
:class:`cairn.worker.Worker`'s claimed batches and its fast path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span
from psycopg.types.json import Jsonb

from cairn import telemetry as _telemetry
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.instance import WorkflowInstance
from cairn.store import lifecycle as _lifecycle


@dataclass
class Prepared:
    """A workflow task whose code has run, waiting to be recorded with its batch."""

    task: dict[str, Any]
    inst: WorkflowInstance
    events: list[Event]
    inbox_ids: list[int]
    family: bool  # the run closes and has a parent or children (see cairn.store.lifecycle)
    began: float
    began_ns: int
    close_status: str | None  # the status the events close the run with, if they do
    wait_cancels: list[int]  # activities cancelled with wait_cancellation_completed
    extras: list[tuple[str, dict[str, Any]]]  # named statements after record_workflow_tasks
    plain: bool  # record_workflow_tasks records it all (no extras, no lifecycle statements)
    span: Span | None = None

    @classmethod
    def of(cls, task: dict[str, Any], inst: WorkflowInstance, events: list[Event], inbox_ids: list[int],
           began: float, began_ns: int) -> Prepared:
        family = inst.closed and (inst.info.parent_run_id is not None or inst.children_started > 0)
        wait_cancels = [ev.data["activity_seq"] for ev in events if ev.type == h.ACTIVITY_CANCEL_REQUESTED
                        and ev.data.get("cancellation_type") == "wait_cancellation_completed"]
        close_status = next((h.TERMINAL_EVENTS[e.type] for e in events if e.type in h.TERMINAL_EVENTS), None)
        extras = extra_statements(task, events, close_status, wait_cancels)
        plain = not extras and not _lifecycle.has_commands(events, family)
        return cls(task, inst, events, inbox_ids, family, began, began_ns, close_status, wait_cancels, extras,
                   plain)


def extra_statements(task: dict[str, Any], events: list[Event], close_status: str | None,
                     wait_cancels: list[int]) -> list[tuple[str, dict[str, Any]]]:
    """What a recorded task needs besides ``record_workflow_tasks`` and the lifecycle's
    statements, as (statement name, parameters): search attributes, timers, cancels. Most
    tasks need none; then the record carries the COMMIT."""
    base = {"run_id": str(task["run_id"]), "now": None}
    timers, cancel_timers, cancel_acts = [], [], []
    upserts: dict[str, Any] = {}  # search attributes set (None: removed) by this task
    for ev in events:
        if ev.type == h.TIMER_STARTED:
            timers.append({"seq": ev.seq, "fire_at": ev.data["fire_at"]})
        elif ev.type == h.TIMER_CANCELLED:
            cancel_timers.append(ev.data["timer_seq"])
        elif ev.type == h.ACTIVITY_CANCEL_REQUESTED and ev.data["activity_seq"] not in wait_cancels:
            cancel_acts.append(ev.data["activity_seq"])
        elif ev.type == h.UPSERT_SEARCH_ATTRIBUTES:
            upserts.update(ev.data["search_attributes"])
    out: list[tuple[str, dict[str, Any]]] = []
    if upserts:
        out.append(("upsert_search_attributes", {
            **base, "set": Jsonb({k: v for k, v in upserts.items() if v is not None}),
            "remove": [k for k, v in upserts.items() if v is None]}))
    if close_status is None:  # a closing task drops its run's timers and activities instead
        if timers:
            out.append(("start_timers", {**base, "workflow_queue": task["queue"], "timers": Jsonb(timers)}))
        if cancel_timers:
            out.append(("cancel_timers", {**base, "seqs": cancel_timers}))
        if cancel_acts:
            out.append(("cancel_activities", {**base, "seqs": cancel_acts}))
        if wait_cancels:
            out.append(("request_activity_cancels", {**base, "seqs": wait_cancels}))
    return out


def count_runs(tasks: list[dict[str, Any]]) -> None:
    """Counts runs started and closed by committed workflow tasks (never by rolled-back ones)."""
    for task in tasks:
        started, workflow_type, closed = task.pop("_metrics", (None, None, None))
        if started:
            _telemetry.workflows_started.add(1, {"workflow_type": workflow_type})
        if closed:
            _telemetry.workflows_closed.add(1, {"workflow_type": workflow_type, "status": closed})
