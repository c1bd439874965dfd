"""The one error tree of Cairn.

Every error Cairn raises on purpose derives from :class:`CairnError`. Errors that users
may catch inside workflow code (:class:`ActivityError`, :class:`ApplicationError`) carry
only a type name and a message, so that they can be recorded in history and rebuilt on
replay exactly.

Three exceptions here are not errors but signals that steer a run, and so do not derive
from :class:`CairnError`: :class:`WorkflowTaskFailed` (the workflow code is broken: retry
the task, record nothing), :class:`Reschedule` (an activity asks to be put back) and
:class:`ContinueAsNewError` (a ``BaseException`` that unwinds workflow code). Public
modules re-export what their users meet (``cairn.activity.Reschedule``, ``cairn.__all__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cairn.redaction import redact

if TYPE_CHECKING:
    from cairn.llm.classify import Classification, ErrorKind


class CairnError(Exception):
    """Base class of every error Cairn raises on purpose."""


class InputValidationError(CairnError):
    """Input failed validation; nothing was written."""


class StaleTaskToken(InputValidationError):
    """A task token names no attempt that can still be completed: a newer attempt exists
    (this one timed out or failed), the activity has its outcome already (or was
    cancelled), or its run is closed. Nothing was written.

    Attributes:
        reason: ``superseded``, ``done`` or ``run_closed``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AsyncActivityCancelled(CairnError):
    """A heartbeat by task token learned that the workflow asked the activity to stop (the
    heartbeat was recorded): report the cancellation, or complete or fail it."""


class ConfigurationError(CairnError):
    """Cairn is set up wrongly (a bad URL, an unknown module, a missing migration)."""


class DatabaseError(CairnError):
    """The database failed in a way Cairn could not handle (translated from psycopg)."""


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached, or the connection to it was lost (a restart, a
    failover, a terminated session): trying again later may succeed."""


class OutcomeUnknown(DatabaseUnavailable):
    """The connection was lost while a write was on its way: it may or may not have taken
    effect. The message says how to find out before trying it again."""


class SchemaNotReadyError(ConfigurationError):
    """The database has no Cairn schema, or an older one: run ``cairn db migrate``."""


class WorkflowNotFound(CairnError):
    """No workflow run matches the given id."""


class ScheduleNotFound(InputValidationError):
    """No schedule has this id (in the client's namespace); nothing was written."""


class ScheduleAlreadyRunning(InputValidationError):
    """A schedule with this id exists already (Temporal's ScheduleAlreadyRunningError)."""


class WorkflowAlreadyStarted(CairnError):
    """A run with this workflow id is already open and the id-conflict policy is "fail"."""

    def __init__(self, workflow_id: str, run_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} is already running (run {run_id})")
        self.workflow_id = workflow_id
        self.run_id = run_id


class WorkflowClosed(CairnError):
    """The workflow's run is closed: it takes no more signals.

    Attributes:
        workflow_id: the workflow id.
        run_id: the closed run.
        status: how it closed (completed, failed, cancelled, terminated, ...).
    """

    def __init__(self, workflow_id: str, run_id: str, status: str, what: str = "a signal") -> None:
        super().__init__(f"workflow {workflow_id!r} is closed (its run {run_id} is {status}): it cannot take {what}")
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.status = status


class QueryFailed(CairnError):
    """A query was answered with an error: no handler of that name, or the handler raised.

    Attributes:
        type: the error's type name (``UnknownQuery`` when the name has no handler).
        message: its message.
    """

    def __init__(self, message: str, *, type: str = "QueryFailed") -> None:
        super().__init__(message)
        self.message = message
        self.type = type


class QueryTimeout(CairnError):
    """No worker answered a query in time (is a worker running for the run's queue?)."""


class WorkflowUpdateFailedError(CairnError):
    """An update did not produce a result: its validator rejected it (nothing was recorded),
    its handler raised, or the run closed before the handler finished.

    Attributes:
        update_id: the update's id.
        type: the error's type name (the exception's; ``UnknownUpdate`` when the run has no
            handler of that name, ``WorkflowClosed`` when the run closed first).
        message: its message.
        details: what an ``ApplicationError`` carried, else None.
        rejected: True if the validator (or a missing handler) refused the update.
        cause: the failure as an ``ApplicationError`` (Temporal's ``.cause``), if any.
    """

    def __init__(self, message: str, *, update_id: str, type: str = "Error", details: Any = None,
                 rejected: bool = False) -> None:
        super().__init__(message)
        self.update_id = update_id
        self.message = message
        self.type = type
        self.details = details
        self.rejected = rejected
        self.cause: ApplicationError | None = None


class WorkflowUpdateTimeout(CairnError):
    """An update's outcome did not arrive in time; the update may still be applied later
    (asking again with the same update id waits for the same outcome)."""


class InvalidFilter(InputValidationError):
    """A ``list --where`` filter is malformed; ``column`` (1-based) says where."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.column = column


class UnknownWorkflowType(InputValidationError):
    """No worker has registered a workflow type of this name."""


class NonDeterminismError(CairnError):
    """Replaying the current code over a history produced different commands.

    Attributes:
        seq: the history seq at which the divergence shows.
        expected: the command recorded in history (``None`` if history has none there).
        produced: the command the current code produced (``None`` if it produced none).
    """

    def __init__(self, seq: int, expected: str | None, produced: str | None) -> None:
        super().__init__(
            f"non-deterministic workflow at seq {seq}: history has "
            f"{expected or 'no command'}, the code produced {produced or 'no command'}"
        )
        self.seq = seq
        self.expected = expected
        self.produced = produced


class DeterminismViolation(CairnError):
    """Workflow code did something that cannot be replayed (I/O, wall clock, threads)."""


class WorkflowFailure(CairnError):
    """A failure recorded in history: a type name, a message and optional details.

    Raised to callers of ``handle.result()`` when a run failed, and the base of errors
    that reach workflow code from recorded events.
    """

    def __init__(
        self, message: str, *, type: str | None = None, details: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or self.__class__.__name__
        self.details = details
        self.stack: str | None = None  # where it was raised, when it came from a recorded failure
        # what caused it, when the recorded failure says (an ActivityError's activity error ...)
        self.cause: WorkflowFailure | None = None

    def to_failure(self) -> dict[str, Any]:
        """The JSON form recorded in history."""
        out = {"type": self.type, "message": self.message, "details": self.details}
        if self.stack:
            out["stack"] = self.stack
        return out

    @classmethod
    def from_failure(cls, failure: dict[str, Any]) -> ApplicationError:
        """A recorded failure (``{"type", "message", "details", "stack"}``) as an
        :class:`ApplicationError`, with the chain of causes an ``ActivityError`` or a
        ``ChildWorkflowError`` records in its details (Temporal's cause chain)."""
        err = ApplicationError(str(failure.get("message") or ""), type=str(failure.get("type") or "Error"),
                               details=failure.get("details"), non_retryable=bool(failure.get("non_retryable")))
        err.stack = failure.get("stack") or None
        err.cause = err.__cause__ = cause_of(failure)
        return err


def cause_of(failure: dict[str, Any]) -> ApplicationError | None:
    """The cause a recorded ``ActivityError`` or ``ChildWorkflowError`` carries in its details."""
    details = failure.get("details")
    if failure.get("type") in ("ActivityError", "ChildWorkflowError") and isinstance(details, dict) \
            and "type" in details and "message" in details:
        return WorkflowFailure.from_failure(details)
    return None


class ApplicationError(WorkflowFailure):
    """An error raised by user code with an explicit type, message and retry hint.

    Raise it from an activity with ``non_retryable=True`` to stop retries at once.
    """

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        details: Any = None,
        non_retryable: bool = False,
    ) -> None:
        super().__init__(message, type=type or "ApplicationError", details=details)
        self.non_retryable = non_retryable


class ActivityError(WorkflowFailure):
    """An activity failed for good: its retries ran out, or its error was non-retryable.

    Attributes:
        cause: the last attempt's error as an :class:`ApplicationError`.
        activity: the activity's name.
        seq: the activity's seq in the run's history.
        attempts: how many attempts ran.
    """

    def __init__(
        self,
        message: str,
        *,
        cause: ApplicationError,
        activity: str,
        seq: int,
        attempts: int,
        retry_state: str,
    ) -> None:
        super().__init__(message, type="ActivityError", details=cause.to_failure())
        self.cause = cause
        self.activity = activity
        self.seq = seq
        self.attempts = attempts
        self.retry_state = retry_state
        self.__cause__ = cause


class WorkflowCancelled(WorkflowFailure):
    """The run was cancelled."""


class WorkflowTerminated(WorkflowFailure):
    """The run was terminated by an operator; no workflow code ran after that."""


class WorkflowTimeout(CairnError):
    """Waiting for a result took longer than the caller allowed."""


class WorkflowIdReuseRefused(WorkflowAlreadyStarted):
    """The id reuse policy refuses a new run because of the id's closed runs.

    Attributes:
        run_id: the newest closed run of the id.
        status: that run's status.
        policy: the id reuse policy that refused.
    """

    def __init__(self, workflow_id: str, run_id: str, status: str, policy: str) -> None:
        CairnError.__init__(
            self, f"workflow id {workflow_id!r} may not be reused (policy {policy}): "
                  f"its run {run_id} {status.replace('_', ' ')}"
        )
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.status = status
        self.policy = policy


class WorkflowTimedOutError(WorkflowFailure):
    """The run passed its execution timeout; no workflow code ran after that."""


class ChildWorkflowError(WorkflowFailure):
    """A child workflow failed, was cancelled, terminated or timed out, or could not start.

    Attributes:
        cause: the child's failure as an :class:`ApplicationError` (its ``type`` is e.g.
            ``WorkflowCancelled``, ``WorkflowTerminated``, ``WorkflowTimedOut``,
            ``WorkflowAlreadyStarted``, or the type of the error the child failed with).
        workflow_id: the child's workflow id.
        run_id: the child's run (``None`` if it did not start).
        seq: the seq of the parent's ``ChildWorkflowScheduled`` command.
        status: the child's final status (``"not_started"`` if it did not start).
    """

    def __init__(self, message: str, *, cause: ApplicationError, workflow_id: str, run_id: str | None,
                 seq: int, status: str) -> None:
        super().__init__(message, type="ChildWorkflowError", details=cause.to_failure())
        self.cause = cause
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.seq = seq
        self.status = status
        self.__cause__ = cause


class HistoryTooLong(CairnError):
    """A workflow task would grow the run's history past ``MAX_HISTORY_EVENTS``
    (:func:`cairn.engine.history.check_history_length`)."""


# ---------------------------------------------------------------- signals raised to steer, not errors


class WorkflowTaskFailed(Exception):
    """The workflow code failed in a way that must not be recorded (a bug, a determinism
    violation): the workflow task is retried, history is left untouched.

    Attributes:
        cause: what the code raised (``cairn.engine.instance.failure_of(cause)`` is its
            JSON form, as the worker records it with the failed task).
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


# What an activity may be rescheduled for (Reschedule's kind).
RESCHEDULE_KINDS = ("throttle", "breaker", "rate_limit")


class Reschedule(Exception):
    """Raise from an activity to put the attempt back ``delay`` seconds from now without
    burning an attempt (a throttle: a 429's Retry-After, an open breaker, a rate limit).

    The worker adds 0-10 % jitter (and up to 1 s more for ``kind="breaker"``), counts the
    time against the activity's throttle budget (option ``throttle_budget``, default
    600 s) and its schedule-to-close deadline: past either, the activity fails for good
    with type ``ThrottleBudgetExhausted`` (or ``ScheduleToCloseTimeout``). Nothing sleeps in the
    worker: the delay is a new
    ``available_at``.

    Args:
        delay: seconds from now (negative counts as 0).
        reason: why, shown by ``cairn describe`` ("throttled until ...: reason").
        kind: ``"throttle"``, ``"breaker"`` or ``"rate_limit"``.
    """

    def __init__(self, delay: float, *, reason: str, kind: str = "throttle") -> None:
        if kind not in RESCHEDULE_KINDS:
            raise ValueError(f"Reschedule kind must be one of {', '.join(RESCHEDULE_KINDS)}, not {kind!r}")
        super().__init__(f"{kind}: {reason} (retry in {delay:.3f} s)")
        self.delay = max(float(delay), 0.0)
        self.reason = reason
        self.kind = kind


class ContinueAsNewError(BaseException):
    """Raised by :func:`cairn.workflow.continue_as_new` to unwind the workflow code.

    A ``BaseException``, so ``except Exception`` in workflow code does not swallow it; the
    run then closes as ``continued_as_new`` and a new run of the same workflow id starts
    with ``args``.
    """

    def __init__(self, args: list[Any]) -> None:
        super().__init__("continue as new")
        self.input = args


# ---------------------------------------------------------------- breakers and LLM providers


class BreakerNotFound(InputValidationError):
    """An operator named a breaker that does not exist."""


class ProviderConfigError(ConfigurationError, InputValidationError):
    """A providers file (or inline JSON) that cannot be used: bad input, so the CLI exits 2."""


class ProviderError(CairnError):
    """A provider call failed; ``kind`` says what the engine should do about it.

    Attributes:
        kind: ``throttle`` | ``retryable`` | ``fatal`` | ``non_retryable`` (see cairn.llm.classify).
        reason: a short code (``rate_limit``, ``quota``, ``ttft``, ``http_500``, ...).
        status: the HTTP status, if an answer came.
        retry_after: seconds the provider asked to wait (>= 0), if it said.
        provider: the provider's configured name.
        model: the requested model.
        message: a short, sanitized description (never a key, never request headers).
    """


    def __init__(self, kind: ErrorKind, message: str, *, provider: str, model: str, status: int | None = None,
                 retry_after: float | None = None, reason: str = "") -> None:
        self.kind: ErrorKind = kind
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.provider = provider
        self.model = model
        self.message = message = redact(message)  # a provider may echo the key it was given
        facts = [f"HTTP {status}"] if status is not None else []
        if retry_after is not None:
            facts.append(f"retry after {retry_after:g} s")
        where = f" ({', '.join(facts)})" if facts else ""
        super().__init__(f"{provider}/{model}: {kind}{where}: {message}")

    @classmethod
    def from_classification(cls, c: Classification, *, provider: str, model: str,
                            status: int | None = None) -> ProviderError:
        """Builds the error a :class:`~cairn.llm.classify.Classification` describes."""
        return cls(c.kind, c.message or c.reason, provider=provider, model=model, status=status,
                   retry_after=c.retry_after, reason=c.reason)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments: the default pickling would lose them (process pools, logs).
        return (_rebuild_provider_error, (self.kind, self.message, self.provider, self.model, self.status,
                                          self.retry_after, self.reason))


def _rebuild_provider_error(kind: ErrorKind, message: str, provider: str, model: str, status: int | None,
                            retry_after: float | None, reason: str) -> ProviderError:
    return ProviderError(kind, message, provider=provider, model=model, status=status,
                         retry_after=retry_after, reason=reason)


# ---------------------------------------------------------------- the worker's statements
# What the store (store/transactions.py) makes of psycopg's errors for the worker, which
# acts on each differently; users do not meet them (the worker retries or records them).


class Refused(DatabaseError):
    """The database refused a statement for what it carried (a value it cannot store, a
    constraint, a statement it cannot run): sending it again changes nothing."""

    def __init__(self, message: str, *, race: bool = False, integrity: bool = False) -> None:
        super().__init__(message)
        self.race = race  # a unique violation: someone appended to the run meanwhile
        self.integrity = integrity  # a constraint (not the value itself) refused it


class Transient(DatabaseUnavailable):
    """The database aborted the statement for reasons of the moment (a lost connection, a
    restart, a deadlock): the same statement may succeed when sent again."""


class Deadlock(Transient):
    """Postgres aborted this side of a deadlock."""


class SpeculationMissed(DatabaseError):
    """``complete_activities_speculated``: a run was not as the worker's cache had it."""
