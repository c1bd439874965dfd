"""Operator actions on finished or stuck runs: reset (re-drive from a workflow task) and retry.

**Reset** (Temporal's reset, DBOS's fork) starts a new run of the same workflow id whose
history is the old run's history before the workflow task that starts at seq N, whose
inbox holds that task's input events, and which has a pending workflow task: the current
code replays the copied events and carries on from there. Whatever was pending at the
reset point (activities without an outcome, timers neither fired nor cancelled) is
re-created; signals the old run received later are re-delivered. The old seed of
``workflow.random()``/``uuid4()`` is carried over in the copied ``WorkflowStarted`` data,
so the copied events replay identically. An open old run is terminated in the same
transaction, under its workflow-task lock (the single-writer rule).

**Retry** starts a failed (cancelled, terminated, timed-out) run again from its original
input, as a new run of the same id, type, queue, search attributes and memo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cairn.client.handle import WorkflowHandle
from cairn.engine.resets import ResetPlan, plan_reset, task_seqs
from cairn.errors import InputValidationError
from cairn.options import check_text, new_run_id
from cairn.store import operators as store
from cairn.store.operators import RETRYABLE_STATUSES

if TYPE_CHECKING:
    from cairn.client.client import Client

__all__ = ["RETRYABLE_STATUSES", "ResetPlan", "check_reason", "plan_reset", "reset", "retry", "task_seqs"]

MAX_REASON_LENGTH = 1000


def check_reason(reason: str) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
        raise InputValidationError(f"the reason must be a string of at most {MAX_REASON_LENGTH} characters")
    return check_text(reason, "the reason")


async def reset(client: Client, workflow_id: str, *, run_id: str | None = None, to_seq: int | None = None,
                to_last_task: bool = False, reason: str = "", reapply_signals: bool = True) -> WorkflowHandle:
    """Resets a run (see the module docstring) and returns a handle on the new run.

    Raises:
        InputValidationError: neither or both of ``to_seq``/``to_last_task``, or a seq that
            does not start a workflow task; nothing was written.
        WorkflowNotFound: no such run.
        WorkflowAlreadyStarted: another run of the workflow id is open.
    """
    if (to_seq is None) == (not to_last_task):
        raise InputValidationError("give exactly one of to_seq and to_last_task")
    if to_seq is not None and (isinstance(to_seq, bool) or not isinstance(to_seq, int) or to_seq < 1):
        raise InputValidationError(f"to_seq must be a positive integer, not {to_seq!r}")
    check_reason(reason)
    row = await client._run_row(workflow_id, run_id)
    new_id = new_run_id()
    await store.reset(client.pool, row, new_id, lambda events, pending: plan_reset(
        events, row.run_id, to_seq, reapply_signals=reapply_signals, pending_signals=pending), reason=reason)
    return WorkflowHandle(client, row.workflow_id, new_id, None)


async def retry(client: Client, workflow_id: str, *, run_id: str | None = None) -> WorkflowHandle:
    """Starts a closed, unsuccessful run again from its original input, as a new run.

    The new run has the same workflow id, type, queue, start search attributes and memo,
    and fresh randomness; ``describe`` shows where it came from.

    Raises:
        InputValidationError: the run is running or completed; nothing was written.
        WorkflowNotFound: no such run.
        WorkflowAlreadyStarted: another run of the workflow id is open.
    """
    row = await client._run_row(workflow_id, run_id)
    if row.status not in RETRYABLE_STATUSES:
        raise InputValidationError(
            f"workflow {row.workflow_id!r} (run {row.run_id}) is {row.status}: only a "
            f"{', '.join(RETRYABLE_STATUSES[:-1])} or {RETRYABLE_STATUSES[-1]} run can be retried")
    new_id = new_run_id()
    await store.retry(client.pool, row, new_id)
    return WorkflowHandle(client, row.workflow_id, new_id, None)
