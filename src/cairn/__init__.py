"""Cairn: durable workflows for Python on nothing but Postgres."""

from __future__ import annotations

from cairn import activity, saga, workflow
from cairn.client import Client, RunDescription, RunPage, WorkflowHandle, WorkflowUpdateHandle, WorkflowUpdateStage
from cairn.errors import (
    ActivityError,
    ApplicationError,
    CairnError,
    ChildWorkflowError,
    ContinueAsNewError,
    DeterminismViolation,
    InputValidationError,
    InvalidFilter,
    NonDeterminismError,
    QueryFailed,
    QueryTimeout,
    UnknownWorkflowType,
    WorkflowAlreadyStarted,
    WorkflowCancelled,
    WorkflowClosed,
    WorkflowFailure,
    WorkflowIdReuseRefused,
    WorkflowNotFound,
    WorkflowTerminated,
    WorkflowTimedOutError,
    WorkflowTimeout,
    WorkflowUpdateFailedError,
    WorkflowUpdateTimeout,
)
from cairn.options import RetryPolicy
from cairn.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ActivityError",
    "ApplicationError",
    "CairnError",
    "ChildWorkflowError",
    "Client",
    "ContinueAsNewError",
    "DeterminismViolation",
    "InputValidationError",
    "InvalidFilter",
    "NonDeterminismError",
    "QueryFailed",
    "QueryTimeout",
    "RetryPolicy",
    "RunDescription",
    "RunPage",
    "UnknownWorkflowType",
    "Worker",
    "WorkflowAlreadyStarted",
    "WorkflowCancelled",
    "WorkflowClosed",
    "WorkflowFailure",
    "WorkflowHandle",
    "WorkflowIdReuseRefused",
    "WorkflowNotFound",
    "WorkflowTerminated",
    "WorkflowTimedOutError",
    "WorkflowTimeout",
    "WorkflowUpdateFailedError",
    "WorkflowUpdateHandle",
    "WorkflowUpdateStage",
    "WorkflowUpdateTimeout",
    "__version__",
    "activity",
    "saga",
    "workflow",
]
