"""Asynchronous activity completion: an outside system completes, fails or heartbeats an
activity attempt by the task token its activity handed out (``activity.info().task_token``,
then ``activity.raise_complete_async()``), as Temporal's ``AsyncActivityHandle`` does.

Every call checks the token and locks the attempt in one transaction
(:mod:`cairn.store.completions`): a token of an earlier attempt, of an activity that has its
outcome, or of a closed run raises :class:`~cairn.errors.StaleTaskToken` and writes nothing.
A failure goes through the activity's retry policy, as a failure raised by the activity
would: the next attempt runs the activity again (with a new token), or the activity fails.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, TypeVar

from cairn.activity import TaskToken, parse_task_token, retry_decision
from cairn.engine import history as h
from cairn.engine.instance import failure_of
from cairn.errors import ApplicationError, AsyncActivityCancelled, InputValidationError
from cairn.payloads import to_payload
from cairn.store import completions
from cairn.store.runs import Conn, Op

if TYPE_CHECKING:
    from cairn.client.client import Client

T = TypeVar("T")
_rng = random.Random()  # retry jitter (not workflow code: no determinism needed)


def _check(token: str | bytes) -> TaskToken:
    if isinstance(token, bytes):  # Temporal's tokens are bytes: accept them encoded
        token = token.decode("ascii", "replace")
    return parse_task_token(token)


async def _write(client: Client, op: Op[T], verb: str, t: TaskToken) -> T:
    """Runs ``op`` as a write not to repeat blindly (see ``Client._write``)."""
    return await client._write(
        op, what=f"{verb} activity {t.seq} of run {t.run_id}",
        check=f"its run's pending activities and history (run {t.run_id}, `cairn describe`) say whether it took effect")


async def complete(client: Client, token: str | bytes, result: Any = None) -> None:
    """Completes the attempt with ``result`` (see :meth:`cairn.Client.complete_activity`)."""
    t = _check(token)
    payload = to_payload(result)

    async def op(conn: Conn) -> None:
        async with completions.open_attempt(conn, t) as a:
            await completions.record(conn, a, h.ACTIVITY_COMPLETED,
                                     {"activity_seq": a.seq, "result": payload, "attempt": a.attempt})

    await _write(client, op, "completing", t)


async def fail(client: Client, token: str | bytes, error: BaseException | str) -> str:
    """Fails the attempt with ``error`` (see :meth:`cairn.Client.fail_activity`); returns
    ``"retrying"``, ``"failed"``, or ``"cancelled"`` (the workflow had asked it to stop)."""
    t = _check(token)
    if isinstance(error, str):
        error = ApplicationError(error)
    if not isinstance(error, BaseException):
        raise InputValidationError(f"fail_activity takes an exception or a message, not {type(error).__name__}")
    failure = failure_of(error)
    non_retryable = bool(failure.get("non_retryable"))

    async def op(conn: Conn) -> str:
        async with completions.open_attempt(conn, t) as a:
            delay, retry_state = retry_decision(a.options, a.attempt, failure, non_retryable, _rng)
            if a.cancel_requested:
                # The workflow waits for it to stop: a failure now is its stop (as a worker's).
                await completions.record(conn, a, h.ACTIVITY_CANCELLED,
                                         {"activity_seq": a.seq, "attempt": a.attempt, "started": True})
                return "cancelled"
            if delay is not None:
                if await completions.retry(conn, a, delay=delay, failure=failure):
                    return "retrying"
                retry_state = "schedule_to_close_timeout"
            await completions.record(conn, a, h.ACTIVITY_FAILED, {
                "activity_seq": a.seq, "failure": failure, "attempts": a.attempt, "retry_state": retry_state})
            return "failed"

    return await _write(client, op, "failing", t)


async def heartbeat(client: Client, token: str | bytes, details: Any = None) -> None:
    """Records a heartbeat (see :meth:`cairn.Client.heartbeat_activity`)."""
    t = _check(token)
    payload = to_payload(details, store=False)

    async def op(conn: Conn) -> bool:
        async with completions.open_attempt(conn, t) as a:
            return await completions.heartbeat(conn, a, payload)

    # A heartbeat is safe to repeat: it only moves the heartbeat deadline on.
    if await client._read(op):
        raise AsyncActivityCancelled(f"the workflow asked activity {t.seq} of run {t.run_id} to stop "
                                     "(the heartbeat was recorded): report the cancellation")


async def report_cancellation(client: Client, token: str | bytes) -> None:
    """Records that the activity stopped after its workflow asked it to (see
    :meth:`AsyncActivityHandle.report_cancellation`)."""
    t = _check(token)

    async def op(conn: Conn) -> None:
        async with completions.open_attempt(conn, t) as a:
            if not a.cancel_requested:
                raise InputValidationError(f"activity {a.activity_type} (seq {a.seq}) was not asked to stop: "
                                           "complete or fail it instead")
            await completions.record(conn, a, h.ACTIVITY_CANCELLED,
                                     {"activity_seq": a.seq, "attempt": a.attempt, "started": True})

    await _write(client, op, "reporting the cancellation of", t)


class AsyncActivityHandle:
    """An activity attempt to complete from outside, by its task token (Temporal's
    ``client.get_async_activity_handle(task_token=...)``)."""

    def __init__(self, client: Client, task_token: str | bytes) -> None:
        self._client = client
        self.task_token = task_token
        _check(task_token)

    async def complete(self, result: Any = None) -> None:
        """Completes the activity with ``result``."""
        await complete(self._client, self.task_token, result)

    async def fail(self, error: BaseException | str) -> str:
        """Fails this attempt; the retry policy decides (``"retrying"`` or ``"failed"``)."""
        return await fail(self._client, self.task_token, error)

    async def heartbeat(self, details: Any = None) -> None:
        """Records a heartbeat (with ``details``), pushing the heartbeat deadline on.

        Raises:
            AsyncActivityCancelled: the workflow asked the activity to stop.
        """
        await heartbeat(self._client, self.task_token, details)

    async def report_cancellation(self) -> None:
        """Records that the activity stopped after its workflow asked it to."""
        await report_cancellation(self._client, self.task_token)
