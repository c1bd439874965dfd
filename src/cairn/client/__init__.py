"""The client: start workflows, wait for results, inspect and steer runs.

:class:`Client` (client.py) starts, lists and steers runs; :class:`WorkflowHandle`
(handle.py) acts on one workflow; the close listener (listener.py) wakes their waits;
messages.py and checks.py hold what they check; withstart.py signals or updates with a
start; operators.py resets and retries;
batches.py acts on every run a filter matches; follow.py follows a run live; schedules.py
creates and steers schedules; workers.py lists workers and says what no live worker serves;
retention.py sets a namespace's retention and archive, and purges closed runs.
Every statement they send is
a :mod:`cairn.store` function's.
"""

from __future__ import annotations

from cairn.client.activities import AsyncActivityHandle
from cairn.client.batches import BatchDescription, BatchHandle, BatchPreview
from cairn.client.checks import check_input
from cairn.client.client import (
    DEFAULT_QUEUE,
    MAX_LIST_LIMIT,
    Client,
    IdConflictPolicy,
    add_visibility,
)
from cairn.client.handle import RunDescription, WorkflowHandle
from cairn.client.pauses import Pause
from cairn.client.records import RunPage, StartTarget
from cairn.client.retention import NamespaceHandle, NamespaceSettings, PurgeSummary
from cairn.client.schedules import (
    ScheduleActionResult,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleInfo,
    ScheduleListEntry,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from cairn.client.updates import WithStartWorkflowOperation, WorkflowUpdateHandle, WorkflowUpdateStage
from cairn.client.workers import WorkerInfo
from cairn.schedules import (  # Temporal users import the schedule types from the client (temporalio.client)
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleBackfill,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)

__all__ = [
    "DEFAULT_QUEUE",
    "MAX_LIST_LIMIT",
    "AsyncActivityHandle",
    "BatchDescription",
    "BatchHandle",
    "BatchPreview",
    "Client",
    "IdConflictPolicy",
    "NamespaceHandle",
    "NamespaceSettings",
    "Pause",
    "PurgeSummary",
    "RunDescription",
    "RunPage",
    "Schedule",
    "ScheduleActionResult",
    "ScheduleActionStartWorkflow",
    "ScheduleBackfill",
    "ScheduleDescription",
    "ScheduleHandle",
    "ScheduleInfo",
    "ScheduleIntervalSpec",
    "ScheduleListEntry",
    "ScheduleOverlapPolicy",
    "SchedulePolicy",
    "ScheduleSpec",
    "ScheduleState",
    "ScheduleUpdate",
    "ScheduleUpdateInput",
    "StartTarget",
    "WithStartWorkflowOperation",
    "WorkerInfo",
    "WorkflowHandle",
    "WorkflowUpdateHandle",
    "WorkflowUpdateStage",
    "add_visibility",
    "check_input",
]
