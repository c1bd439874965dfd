"""The client side of workflow updates: a request into a running run that waits for the
handler's answer (Temporal's ``execute_update`` / ``start_update``).

``request_update`` writes the update's row (``cairn.updates``) and an ``UpdateRequested``
event into the run's inbox, in one statement; the run's next workflow task runs the
validator (a rejection is written to the row only, never to history) and delivers an
accepted update as ``UpdateAccepted``; its handler's ``UpdateCompleted`` writes the outcome
to the row, whose ``NOTIFY cairn_update`` wakes the caller (the close listener's session).
The update id makes a request idempotent: the same id is never applied twice, and whoever
asks with it gets the same outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from cairn.client.checks import validate_id
from cairn.client.messages import QUERY_RECHECK_SECONDS, validate_name
from cairn.errors import ApplicationError, InputValidationError, WorkflowUpdateFailedError, WorkflowUpdateTimeout
from cairn.handlers import check_message_args, message_ref
from cairn.options import Priority, as_priority, check_identifier, check_key, seconds
from cairn.payloads import Signature, to_payload
from cairn.store import messages

if TYPE_CHECKING:
    from cairn.client.client import Client
    from cairn.client.handle import WorkflowHandle
    from cairn.store.messages import UpdateOutcome


class WorkflowUpdateStage(enum.IntEnum):
    """How far ``start_update`` waits (Temporal's stages): the update was written
    (``ADMITTED``), the validator accepted it and it is recorded (``ACCEPTED``), or its
    handler finished (``COMPLETED``)."""

    ADMITTED = 1
    ACCEPTED = 2
    COMPLETED = 3


_REACHED = {"requested": WorkflowUpdateStage.ADMITTED, "accepted": WorkflowUpdateStage.ACCEPTED}


def check_update(update: str | Callable[..., Any], args: Sequence[Any], update_id: str | None
                 ) -> tuple[str, list[Any], str, Signature | None]:
    """The update's name, JSON arguments, id (a new UUID if none) and, when it was named by
    its ``@workflow.update`` method, that method's typed parameters and result; checked
    before anything is written.

    Raises:
        InputValidationError: a bad name, id or argument.
    """
    name, signature = message_ref(update, "update")
    name = validate_name(name, "update")
    payload = [to_payload(a) for a in args]
    check_message_args(signature, payload, f"update {name!r}")
    if update_id is None:
        update_id = str(uuid.uuid4())
    elif not isinstance(update_id, str):
        raise InputValidationError(f"an update id must be a string, got {update_id!r}")
    else:
        check_identifier(update_id, "the update id")
        if any(ch.isspace() for ch in update_id):
            raise InputValidationError(f"an update id cannot contain whitespace, got {update_id!r}")
    return name, payload, update_id, signature


class WithStartWorkflowOperation:
    """The start half of an update-with-start (Temporal's ``WithStartWorkflowOperation``):
    the workflow, its arguments, its id and queue, and a started run's ``priority`` and
    ``concurrency_key`` (as :meth:`cairn.Client.start` takes them). ``await
    op.workflow_handle()`` gives the handle of the run the update went to (started, or found
    open) once the call is made.

    Only ``id_conflict_policy="use_existing"`` (an open run takes the update) is offered:
    that is what update-with-start means here.
    """

    def __init__(self, workflow: Callable[..., Any] | str, *args: Any, id: str, queue: str | None = None,
                 id_conflict_policy: str = "use_existing", priority: Priority | int | None = None,
                 concurrency_key: str | None = None) -> None:
        if id_conflict_policy != "use_existing":
            raise InputValidationError(f"WithStartWorkflowOperation takes id_conflict_policy='use_existing' only, "
                                       f"not {id_conflict_policy!r}")
        self.workflow = workflow
        self.args = args
        self.id = validate_id(id)
        self.queue = queue
        self.priority = as_priority(priority)  # checked here too: a bad one is refused before the call
        self.concurrency_key = None if concurrency_key is None else check_key(concurrency_key, "concurrency_key")
        self._handle: WorkflowHandle | None = None
        self._error: BaseException | None = None
        self._done = asyncio.Event()

    def _started(self, handle: WorkflowHandle) -> None:
        self._handle = handle
        self._done.set()

    def _failed(self, exc: BaseException) -> None:
        if self._handle is None:
            self._error = exc
            self._done.set()

    async def workflow_handle(self) -> WorkflowHandle:
        """The run's handle, once the update-with-start call has written the start.

        Raises:
            whatever made the start fail (the call raised it too).
        """
        await self._done.wait()
        if self._handle is None:
            assert self._error is not None
            raise self._error
        return self._handle


class WorkflowUpdateHandle:
    """An update that was sent: its ``id``, :meth:`result` to wait for its outcome, and
    ``workflow_handle``, a handle on the run it went to (the run update-with-start started)."""

    def __init__(self, client: Client, *, workflow_id: str, run_id: str, update_id: str, name: str,
                 outcome: UpdateOutcome | None = None, workflow_handle: WorkflowHandle | None = None,
                 result_type: Any = None, returns: Signature | None = None) -> None:
        self.client = client
        self.workflow_handle = workflow_handle
        self.result_type = result_type
        self._returns = returns  # the handler method's result type, when it was named by its method
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.id = update_id
        self.name = name
        self._outcome = outcome

    async def result(self, timeout: float | None = None) -> Any:
        """Waits for the handler to finish and returns its result (as ``result_type``, if
        the update was sent with one: a dataclass, a pydantic model, an enum ...).

        Raises:
            WorkflowUpdateFailedError: the validator rejected the update (``.rejected``),
                the handler raised (``.type``, ``.message``, ``.details``, ``.cause``), or
                the run closed before the handler finished (``.type == "WorkflowClosed"``).
            WorkflowUpdateTimeout: no outcome within ``timeout`` seconds (the update may
                still complete: ask again with the same id).
        """
        outcome = self._outcome
        if outcome is None or not _finished(outcome):
            outcome = await wait_update(self.client, self.run_id, self.id, WorkflowUpdateStage.COMPLETED,
                                        seconds(timeout), self.workflow_id)
            self._outcome = outcome
        value = value_of(outcome, self.workflow_id, self.id)
        if self.result_type is None:
            if self._returns is not None:
                return self._returns.validate_result(value, f"update {self.name!r}")
            return value
        try:
            return TypeAdapter(self.result_type).validate_python(value)
        except ValidationError as exc:
            raise InputValidationError(f"update {self.id!r} returned {value!r}, which is not a "
                                       f"{getattr(self.result_type, '__name__', self.result_type)}: {exc}") from None


def _finished(outcome: UpdateOutcome) -> bool:
    return outcome.status not in _REACHED or outcome.run_status != "running"


def _reached(outcome: UpdateOutcome, stage: WorkflowUpdateStage) -> bool:
    return _finished(outcome) or _REACHED[outcome.status] >= stage


async def wait_update(client: Client, run_id: str, update_id: str, stage: WorkflowUpdateStage,
                      timeout: float | None, workflow_id: str) -> UpdateOutcome:
    """Waits until the update reaches ``stage`` (or is finished: rejected, completed, failed,
    or its run closed): woken by ``cairn_update`` and ``cairn_closed``, and re-reading every
    second in case a NOTIFY was missed (a listener reconnecting after a lost connection)."""
    await client.listener.ensure(timeout)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    key = f"update:{run_id}:{update_id}"
    while True:
        # Waiters registered before the read: an outcome in between is not missed.
        with client.listener.waiter(key) as done, client.listener.waiter(run_id) as closed:
            # Through a database outage for as long as the caller waits (None: as long as it takes).
            read_wait = None if deadline is None else max(deadline - loop.time(), 1.0)
            outcome = await client._read(lambda c: messages.update_outcome(c, run_id, update_id), wait=read_wait)
            if outcome is None:
                raise WorkflowUpdateFailedError(f"workflow {workflow_id!r} has no update {update_id!r}",
                                                update_id=update_id, type="UnknownUpdate")
            if _reached(outcome, stage):
                return outcome
            wait = QUERY_RECHECK_SECONDS
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WorkflowUpdateTimeout(
                        f"update {update_id!r} of workflow {workflow_id!r} did not reach {stage.name.lower()} "
                        f"within {timeout:g} s (it is {outcome.status}; is a worker running for its queue?)")
                wait = min(wait, remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.wait([done, closed], return_when=asyncio.FIRST_COMPLETED), wait)


def value_of(outcome: UpdateOutcome, workflow_id: str, update_id: str) -> Any:
    """A finished update's result, or its error raised."""
    if outcome.status == "completed":
        return outcome.result
    if outcome.status in _REACHED:  # its run closed first
        raise WorkflowUpdateFailedError(
            f"workflow {workflow_id!r} closed ({outcome.run_status}) before update {update_id!r} completed",
            update_id=update_id, type="WorkflowClosed")
    failure = outcome.failure or {}
    kind = str(failure.get("type") or "Error")
    message = str(failure.get("message") or "")
    rejected = outcome.status == "rejected"
    error = WorkflowUpdateFailedError(
        f"update {update_id!r} of workflow {workflow_id!r} {'was rejected' if rejected else 'failed'}: "
        f"{kind}: {message}", update_id=update_id, type=kind, details=failure.get("details"), rejected=rejected)
    error.message = message
    error.cause = ApplicationError(message, type=kind, details=failure.get("details"))
    raise error from error.cause  # chained as Temporal's: ``e.__cause__`` is the handler's error
