"""Cairn: durable workflows for Python on nothing but Postgres."""

from __future__ import annotations

from cairn import activity, saga, workflow
from cairn.client import AsyncActivityHandle, Client, RunDescription, RunPage, WorkflowHandle
from cairn.errors import (
    ActivityError,
    ApplicationError,
    AsyncActivityCancelled,
    CairnError,
    ChildWorkflowError,
    ContinueAsNewError,
    DeterminismViolation,
    InputValidationError,
    InvalidFilter,
    NonDeterminismError,
    QueryFailed,
    QueryTimeout,
    StaleTaskToken,
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
)
from cairn.options import RetryPolicy
from cairn.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ActivityError",
    "ApplicationError",
    "AsyncActivityCancelled",
    "AsyncActivityHandle",
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
    "StaleTaskToken",
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
    "__version__",
    "activity",
    "saga",
    "workflow",
]
