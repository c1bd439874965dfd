"""Running local activities inside a workflow task (``workflow.execute_local_activity``).

The task runner activates a workflow, then, while the instance has pending local
activities (``WorkflowInstance.local_requests``), runs them all at once here and hands the
outcomes back (``resolve_local_activities``), which records them as markers and runs the
code on. Everything happens inside the task's transaction, between its claim and its
record: no activity row, no NOTIFY, no second commit. See ``cairn.engine.local`` for the
markers and their replay.

Retries: a failed attempt is retried here, after its backoff, when the backoff is at most
the call's ``local_retry_threshold`` and the batch's local budget (LOCAL_BUDGET_SECONDS)
leaves room; otherwise the outcome is a backoff (a marker and a durable timer) and the
retry runs in a later task. Requests reached once the budget is spent are put off the
same way (a backoff of MIN_BACKOFF_SECONDS, no attempt burnt).

Crash semantics: the outcome is durable only when the task commits. A worker killed (or a
database connection lost) after running a local activity and before the commit leaves no
trace: the task is claimed again, the history replayed, and the activity runs again. Local
activities therefore run at least once, as in Temporal; once a marker is recorded, a
replay returns its outcome and the function never runs again for it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

from cairn import activity as activity_api
from cairn.activity import ActivityDefinition, ActivityInfo
from cairn.engine.instance import WorkflowInstance, failure_of
from cairn.engine.local import MIN_BACKOFF_SECONDS, LocalOutcome, LocalRequest
from cairn.errors import ApplicationError, InputValidationError, WorkflowTaskFailed
from cairn.options import RetryPolicy
from cairn.payloads import to_payload
from cairn.worker.wakes import Pools


class LocalRunner:
    """Runs a workflow task's local activities (see the module docstring)."""

    def __init__(self, activities: dict[str, ActivityDefinition], identity: str, pools: Pools,
                 threads: Executor | None = None) -> None:
        self._activities = activities
        self._identity = identity
        self._pools = pools  # the activity code's pool goes in ActivityInfo._pool, as for activities
        self._threads = threads  # None: the loop's default executor

    async def run(self, inst: WorkflowInstance, *, now: float, began: float, deadline: float) -> list[LocalOutcome]:
        """Runs every pending request of ``inst`` concurrently; their outcomes.

        Args:
            now: workflow time (the database's clock) when the task began, at ``began``
                (``time.monotonic()``).
            deadline: the ``time.monotonic()`` past which no attempt starts (the budget).

        Raises:
            WorkflowTaskFailed: an activity type this worker does not have.
        """
        requests = inst.local_requests()
        for request in requests:
            if request.activity_type not in self._activities:
                raise WorkflowTaskFailed(ApplicationError(
                    f"local activity {request.activity_type!r} is not registered on this worker "
                    "(pass it in Worker(activities=...))", type="ActivityNotRegistered"))
        return list(await asyncio.gather(*(
            self._run_one(inst, r, now=now, began=began, deadline=deadline) for r in requests)))

    async def _run_one(self, inst: WorkflowInstance, request: LocalRequest, *, now: float, began: float,
                       deadline: float) -> LocalOutcome:
        definition = self._activities[request.activity_type]
        options = request.options
        policy = RetryPolicy.model_validate(options.get("retry_policy") or {})
        threshold = float(options.get("local_retry_threshold") or 0.0)
        start_to_close = options.get("start_to_close_timeout")
        schedule_to_close = options.get("schedule_to_close_timeout")
        closes_at = request.scheduled_at + schedule_to_close if schedule_to_close else None
        attempt = request.attempt
        while True:
            if time.monotonic() >= deadline:  # out of budget: put off to a later task, no attempt burnt
                return LocalOutcome(request.local_seq, attempt - 1, backoff=MIN_BACKOFF_SECONDS)
            clock = now + time.monotonic() - began  # workflow time, as the database would tell it
            limits = [float(start_to_close)] if start_to_close else []
            if closes_at is not None:
                if clock >= closes_at:
                    return _timed_out(request.local_seq, attempt - 1)
                limits.append(closes_at - clock)
            try:
                result = await self._attempt(inst, request, definition, attempt, clock, min(limits))
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    closing = closes_at is not None and closes_at - clock <= min(limits)
                    exc = ApplicationError(
                        f"{'schedule' if closing else 'start'}-to-close timeout exceeded",
                        type="ScheduleToCloseTimeout" if closing else "StartToCloseTimeout")
                failure = failure_of(exc)
                non_retryable = isinstance(exc, ApplicationError) and exc.non_retryable
                if failure.get("type") == "ScheduleToCloseTimeout":
                    return LocalOutcome(request.local_seq, attempt, failure=failure,
                                        retry_state="schedule_to_close_timeout")
                delay = policy.next_delay(attempt, str(failure.get("type")), non_retryable=non_retryable)
                if delay is None:
                    state = "non_retryable_failure" if non_retryable or failure.get("type") in \
                        policy.non_retryable_error_types else "maximum_attempts_reached"
                    return LocalOutcome(request.local_seq, attempt, failure=failure, retry_state=state)
                clock = now + time.monotonic() - began
                if closes_at is not None and clock + delay >= closes_at:
                    return LocalOutcome(request.local_seq, attempt, failure=failure,
                                        retry_state="schedule_to_close_timeout")
                if delay > threshold or time.monotonic() + delay >= deadline:
                    return LocalOutcome(request.local_seq, attempt, failure=failure,
                                        backoff=max(delay, MIN_BACKOFF_SECONDS))
                await asyncio.sleep(delay)
                attempt += 1
                continue
            return LocalOutcome(request.local_seq, attempt, result=result)

    async def _attempt(self, inst: WorkflowInstance, request: LocalRequest, definition: ActivityDefinition,
                       attempt: int, clock: float, timeout: float) -> Any:
        name = request.activity_type
        i = inst.info
        info = ActivityInfo(
            activity_type=name, workflow_id=i.workflow_id, workflow_type=i.workflow_type, run_id=i.run_id,
            seq=request.local_seq, attempt=attempt, queue=i.queue,
            scheduled_at=datetime.fromtimestamp(request.scheduled_at, UTC),
            started_at=datetime.fromtimestamp(clock, UTC),
            deadline=datetime.fromtimestamp(clock + timeout, UTC), worker=self._identity,
            _pool=self._pools.activity, is_local=True,
        )
        args = definition.signature.validate_args(request.args, f"activity {name}")
        token = activity_api._current.set(info)
        try:
            async with asyncio.timeout(max(timeout, 0.001)):
                result = await definition.call(args, self._threads)
        finally:
            activity_api._current.reset(token)
        try:
            return to_payload(result)
        except InputValidationError as bad:
            raise ApplicationError(f"activity {name} returned a result that cannot be recorded: {bad}",
                                   type="ResultNotRecordable", non_retryable=True) from None


def _timed_out(local_seq: int, attempts: int) -> LocalOutcome:
    return LocalOutcome(local_seq, attempts, failure={
        "type": "ScheduleToCloseTimeout", "message": "schedule-to-close timeout exceeded", "details": None},
        retry_state="schedule_to_close_timeout")
