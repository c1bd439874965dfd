"""Drives a WorkflowInstance by hand, the way the worker does, with hand-built events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cairn.engine import history as h
from cairn.engine.history import Command, Event
from cairn.engine.instance import WorkflowInstance
from cairn.workflow import WorkflowInfo, definition_of

T0 = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
RUN_ID = "018f3a4b-5c6d-7e8f-9a0b-1c2d3e4f5a6b"
OTHER_RUN_ID = "018f3a4b-5c6d-7e8f-9a0b-000000000001"


def make_info(name: str, *, workflow_id: str = "wf-1", run_id: str = RUN_ID,
              start: datetime = T0, queue: str = "default") -> WorkflowInfo:
    return WorkflowInfo(workflow_id=workflow_id, run_id=run_id, workflow_type=name, queue=queue,
                        namespace="default", start_time=start)


# Input events, as (type, data) pairs for Driver.activate.
def completed(activity_seq: int, result: Any = None, attempt: int = 1) -> tuple[str, dict[str, Any]]:
    return h.ACTIVITY_COMPLETED, {"activity_seq": activity_seq, "result": result, "attempt": attempt}


def failed(activity_seq: int, type: str, message: str, *, attempts: int = 1,
           retry_state: str = "maximum_attempts", details: Any = None,
           non_retryable: bool = False) -> tuple[str, dict[str, Any]]:
    failure: dict[str, Any] = {"type": type, "message": message, "details": details}
    if non_retryable:
        failure["non_retryable"] = True
    return h.ACTIVITY_FAILED, {"activity_seq": activity_seq, "failure": failure, "attempts": attempts,
                               "retry_state": retry_state}


def fired(timer_seq: int) -> tuple[str, dict[str, Any]]:
    return h.TIMER_FIRED, {"timer_seq": timer_seq}


def cancel_requested(reason: str = "") -> tuple[str, dict[str, Any]]:
    return h.CANCEL_REQUESTED, {"reason": reason}


class Driver:
    """One workflow run: numbers events like the worker and keeps the full history.

    ``activate(*inputs, at=...)`` appends a ``WorkflowTaskStarted`` marker at workflow time
    ``at`` (default: the previous activation's time), the inputs, and the produced commands.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, run_id: str = RUN_ID,
                 workflow_id: str = "wf-1", start: datetime = T0) -> None:
        self.definition = definition_of(fn)
        self.info = make_info(self.definition.name, workflow_id=workflow_id, run_id=run_id, start=start)
        self.instance = WorkflowInstance(self.definition, self.info, list(args))
        self.now = start
        self.history: list[Event] = [Event(1, h.WORKFLOW_STARTED, {
            "workflow_type": self.definition.name, "input": list(args), "queue": "default",
            "workflow_id": workflow_id,
        })]

    @property
    def last_seq(self) -> int:
        return self.history[-1].seq

    def activate(self, *inputs: tuple[str, dict[str, Any]], at: datetime | None = None,
                 after: float | None = None) -> list[Command]:
        if at is not None:
            self.now = at
        elif after is not None:
            self.now = self.now + timedelta(seconds=after)
        marker = Event(self.last_seq + 1, h.WORKFLOW_TASK_STARTED, {"time": self.now.timestamp(), "worker": "t"})
        events = [Event(marker.seq + 1 + i, t, d) for i, (t, d) in enumerate(inputs)]
        commands = self.instance.activate(marker, events)
        self.history += [marker, *events, *(c.as_event() for c in commands)]
        return commands

    @property
    def result(self) -> Any:
        """The recorded result of a completed run."""
        last = self.history[-1]
        assert last.type == h.WORKFLOW_COMPLETED, last
        return last.data["result"]


def kinds(commands: list[Command]) -> list[tuple[int, str]]:
    return [(c.seq, c.type) for c in commands]
