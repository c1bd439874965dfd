"""Sagas: forward steps with compensations that undo them when the saga fails.

```python
async with workflow.saga() as saga:
    car = await workflow.execute_activity(book_car, trip, start_to_close_timeout=60)
    saga.compensate(cancel_car, car)
    ...
```

If the block raises, or the workflow is cancelled inside it, the registered compensations
run as activities, newest first (or all at once), then the error propagates. The saga's
progress is recorded in history as ``MarkerRecorded`` commands with ``{"kind": "saga"}``:
``started`` (its seq is the saga's id), then ``completed`` or ``compensation_started`` and
``compensation_ended``; the activities started inside the block carry ``"saga": id`` and
the compensations ``"saga": id, "compensation": i``. Replay reproduces all of it, and
:func:`cairn.views.describe_sagas` rebuilds the saga's view from those events.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from cairn.activity import ActivityCall, validate_call
from cairn.engine import history as h
from cairn.engine.instance import WorkflowInstance, failure_of, is_bug
from cairn.engine.loop import current_instance
from cairn.errors import CairnError
from cairn.options import RetryPolicy

__all__ = ["COMPENSATION_START_TO_CLOSE", "Saga", "current_saga"]

# Compensations must eventually succeed: by default each attempt may take this long, and
# attempts are retried without limit (the default RetryPolicy).
COMPENSATION_START_TO_CLOSE = timedelta(minutes=5)

MARKER_KIND = h.SAGA_MARKER

# The saga whose ``async with`` block the running task is in: activities started there
# (cairn.workflow.start_activity) carry its id in history, so describe can list its steps.
current_saga: contextvars.ContextVar[int | None] = contextvars.ContextVar("cairn_current_saga", default=None)


class Saga:
    """One saga; create it with :func:`cairn.workflow.saga` and enter it with ``async with``.

    Attributes:
        id: the seq of the saga's ``started`` marker, once entered.
        outcome: after compensating, what each compensation did (also recorded in the
            workflow's failure under ``"sagas"`` if the error, or one raised from it, fails
            the run).
    """

    def __init__(self, *, parallel_compensation: bool = False, continue_on_error: bool = True) -> None:
        self.parallel_compensation = parallel_compensation
        self.continue_on_error = continue_on_error
        self.id: int | None = None
        self.outcome: dict[str, Any] | None = None
        self._compensations: list[ActivityCall] = []
        self._state = "new"  # new -> open -> closed
        self._instance: WorkflowInstance | None = None
        self._token: contextvars.Token[int | None] | None = None

    def compensate(
        self,
        activity: Callable[..., Any] | str,
        *args: Any,
        start_to_close_timeout: timedelta | float | None = COMPENSATION_START_TO_CLOSE,
        schedule_to_close_timeout: timedelta | float | None = None,
        heartbeat_timeout: timedelta | float | None = None,
        retry_policy: RetryPolicy | None = None,
        queue: str | None = None,
    ) -> None:
        """Registers an activity that undoes a step; it runs only if the saga fails.

        Register it right after the step succeeds, or before the step runs when the step
        may half-succeed (the compensation must then cope with a step that never happened).
        The activity and its arguments are validated now. Options are those of
        :func:`cairn.workflow.start_activity`; by default an attempt may take 5 minutes and
        attempts are retried without limit.
        """
        if self._state != "open":
            raise CairnError("saga.compensate() works only inside the saga's `async with` block")
        self._compensations.append(validate_call(
            activity, args, start_to_close_timeout=start_to_close_timeout,
            schedule_to_close_timeout=schedule_to_close_timeout, heartbeat_timeout=heartbeat_timeout,
            retry_policy=retry_policy, queue=queue,
        ))

    async def __aenter__(self) -> Saga:
        if self._state != "new":
            raise CairnError("a saga can be entered only once")
        inst = current_instance()
        self.id = inst.record_marker({
            "kind": MARKER_KIND, "event": "started", "parallel_compensation": self.parallel_compensation,
            "continue_on_error": self.continue_on_error,
        })
        self._instance = inst
        self._state = "open"
        self._token = current_saga.set(self.id)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        assert self._instance is not None
        assert self._token is not None
        inst = self._instance
        current_saga.reset(self._token)
        self._state = "closed"
        if exc is None:
            inst.record_marker({"kind": MARKER_KIND, "event": "completed", "saga": self.id})
            return False
        if inst.closed or is_bug(exc) or not isinstance(exc, Exception | asyncio.CancelledError):
            # The instance is being unwound (evicted), or the code is broken: a bug fails the
            # workflow task, which a fixed deployment retries, so nothing may be undone.
            return False
        interrupted = await self._compensate_to_the_end(exc)
        assert self.outcome is not None
        inst.saga_outcomes.append((exc, self.outcome))
        if interrupted and not isinstance(exc, asyncio.CancelledError):
            # A cancellation (a timeout, a cancel request) waited for the compensations to
            # finish: deliver it now rather than swallow it.
            raise asyncio.CancelledError("cancelled while the saga compensated") from exc
        return False

    async def _compensate_to_the_end(self, exc: BaseException) -> bool:
        """Runs the compensations in a task of their own, shielded: a cancellation of this
        task (a second one, or the first if the saga failed) must not interrupt them.
        Returns whether a cancellation arrived meanwhile."""
        assert self._instance is not None
        inst = self._instance
        job = inst.loop.create_task(self._compensate(exc), name=f"saga {self.id} compensation")
        interrupted = False
        while True:
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                if job.done() or inst.closed:  # the instance is being unwound
                    raise
                interrupted = True
                continue
            return interrupted

    async def _compensate(self, exc: BaseException) -> None:
        assert self._instance is not None
        inst = self._instance
        calls = self._compensations[::-1]
        reason = failure_of(exc)
        inst.record_marker({
            "kind": MARKER_KIND, "event": "compensation_started", "saga": self.id,
            "reason": {"type": reason["type"], "message": reason["message"]},
            "compensations": [c.name for c in calls],
        })
        results: list[dict[str, Any]] = [{"activity_type": c.name, "seq": None, "status": "skipped"} for c in calls]
        if self.parallel_compensation:
            handles = [c.start({"saga": self.id, "compensation": i}) for i, c in enumerate(calls)]
            for result, handle in zip(results, handles, strict=True):
                result["seq"] = handle.seq
            outcomes = await asyncio.gather(*handles, return_exceptions=True)
            for result, outcome in zip(results, outcomes, strict=True):
                _settle(result, outcome)
        else:
            for i, (result, call) in enumerate(zip(results, calls, strict=True)):
                handle = call.start({"saga": self.id, "compensation": i})
                result["seq"] = handle.seq
                try:
                    await handle
                except Exception as err:
                    _settle(result, err)
                    if not self.continue_on_error:
                        break
                else:
                    result["status"] = "completed"
        failed = any(r["status"] != "completed" for r in results)
        self.outcome = {"saga": self.id, "status": "compensation_failed" if failed else "compensated",
                        "compensations": results}
        inst.record_marker({"kind": MARKER_KIND, "event": "compensation_ended", **self.outcome})


def _settle(result: dict[str, Any], outcome: BaseException | Any) -> None:
    if not isinstance(outcome, BaseException):
        result["status"] = "completed"
        return
    if is_bug(outcome) or not isinstance(outcome, Exception):
        raise outcome
    failure = failure_of(outcome)
    cause = failure.get("details") if failure["type"] == "ActivityError" else None
    result["status"] = "failed"
    result["failure"] = {"type": failure["type"], "message": failure["message"]}
    if isinstance(cause, dict):
        result["failure"]["cause"] = {"type": cause.get("type"), "message": cause.get("message")}
