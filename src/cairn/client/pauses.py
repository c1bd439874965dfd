"""Pause and resume: a run, one activity, or activity types and queues namespace-wide.

- **A run** (``handle.pause()``, ``cairn pause WORKFLOW_ID``): its workflow tasks are not
  claimed and its activities not started until ``unpause``; attempts running go on and
  their outcomes wait in the inbox, as do signals, updates, fired timers and child
  outcomes. Queries are answered from the run's current state. Timeouts keep running (as
  in Temporal), and a termination by an operator applies at once; a termination by a
  parent's close policy and the execution timeout reach the run's inbox and apply when it
  resumes. Resume makes everything claimable at once.
- **One activity** (``handle.pause_activity(seq)``, ``cairn activity pause``; Temporal's
  ``temporal activity pause``): no new attempt starts; ``unpause_activity`` makes the next
  due at once, its attempt count kept unless ``reset_attempts``. An activity whose retry
  policy has ``on_exhausted="pause"`` is paused this way when its attempts or its throttle
  budget run out; its unpause gives it a fresh set of attempts; ``fail_activity`` fails it
  for good instead.
- **Activity types and queues** (``client.pause(activity_type=..., queue=...)``,
  ``cairn pause --activity-type T [--queue Q]``, ``cairn pause --queue Q``): no new attempt
  of the type (on the queue), or on the queue, starts, in the client's namespace.

``client.list_pauses()`` (``cairn pauses``) lists all of them. How it works:
:mod:`cairn.store.pauses`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cairn.errors import InputValidationError, WorkflowClosed
from cairn.options import MAX_NAME_LENGTH, check_identifier, check_queue, check_text
from cairn.payloads import to_payload
from cairn.store import pauses as store

if TYPE_CHECKING:
    from cairn.client.client import Client
    from cairn.client.handle import WorkflowHandle

MAX_NOTE_LENGTH = 1000


@dataclass(frozen=True)
class Pause:
    """One thing paused (``Client.list_pauses``, ``cairn pauses``).

    Attributes:
        kind: ``run``, ``activity``, ``activity_type`` or ``queue``.
        workflow_id, run_id: the run (of a run or an activity).
        seq: the activity's seq.
        type: the run's workflow type, the activity's type, or the activity type paused.
        queue: the run's or the activity's queue, or the queue paused (None: every queue).
        note, by, at: why, who (``host:pid (client)``, or the worker that paused an
            activity whose attempts ran out), when.
        reason: an activity's: ``operator``, or ``exhausted`` (its retry policy paused it;
            ``retry_state`` says what ran out: ``maximum_attempts``, ``throttle_budget_exhausted``).
        last_failure, attempt: an activity's last failure and attempts made.
    """

    kind: str
    workflow_id: str | None
    run_id: str | None
    seq: int | None
    type: str | None
    queue: str | None
    note: str
    by: str
    at: datetime | None
    reason: str | None = None
    retry_state: str | None = None
    last_failure: dict[str, Any] | None = None
    attempt: int | None = None

    def to_json(self) -> dict[str, Any]:
        return to_payload(self.__dict__, store=False)  # type: ignore[no-any-return]


def _who() -> str:
    """The author of a pause: ``host:pid (client)``, as a batch's."""
    return f"{socket.gethostname()}:{os.getpid()} (client)"


def check_note(note: str) -> str:
    if not isinstance(note, str) or len(note) > MAX_NOTE_LENGTH:
        raise InputValidationError(f"the note must be a string of at most {MAX_NOTE_LENGTH} characters")
    return check_text(note, "the note")


def check_seq(seq: int) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 2:
        raise InputValidationError(f"an activity seq is an integer of 2 or more (see `cairn describe`), not {seq!r}")
    return seq


# ---------------------------------------------------------------- a run


def run_pause(task: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run's pause as describe shows it (from its task row), None if it is not paused;
    the task row keeps it without the store's placeholder mark."""
    if task is None or not task.get("pause"):
        return None
    task["pause"] = {k: v for k, v in task["pause"].items() if k != "placeholder"}
    return dict(task["pause"])


async def pause_run(handle: WorkflowHandle, note: str) -> dict[str, Any]:
    """``WorkflowHandle.pause``: pauses the run (see the module docstring)."""
    note = check_note(note)
    client = handle.client
    done: dict[str, Any] = {}

    async def act(run_id: str) -> bool:
        got = await client._write(
            lambda c: store.pause_run(c, namespace=client.namespace, run_id=run_id, note=note, by=_who()),
            what=f"pausing workflow {handle.workflow_id!r}",
            check=f"see `cairn describe {handle.workflow_id}` (or handle.describe()): it says whether it is paused")
        if got.status != "running":
            return False  # closed meanwhile: the handle looks again (and refuses a closed run)
        done.update(run_id=run_id, pause=got.pause, activities=got.activities)
        return True

    await handle._on_open_run("a pause", act)
    return done


async def unpause_run(handle: WorkflowHandle) -> dict[str, Any]:
    """``WorkflowHandle.unpause``: resumes the run; ``was_paused`` False if it was not paused."""
    client = handle.client
    done: dict[str, Any] = {}

    async def act(run_id: str) -> bool:
        got = await client._write(lambda c: store.unpause_run(c, run_id=run_id),
                                  what=f"resuming workflow {handle.workflow_id!r}",
                                  check=f"see `cairn describe {handle.workflow_id}` (or handle.describe())")
        done.update(run_id=run_id, was_paused=got.was_paused, activities=got.activities)
        return True

    await handle._on_open_run("a resume", act)
    return done


# ---------------------------------------------------------------- one activity


async def _open_run_id(handle: WorkflowHandle, what: str) -> str:
    row = await handle._resolve()
    if row.status != "running":
        raise WorkflowClosed(handle.workflow_id, row.run_id, row.status, what)
    return row.run_id


def _no_activity(handle: WorkflowHandle, run_id: str, seq: int) -> InputValidationError:
    return InputValidationError(
        f"workflow {handle.workflow_id!r} (run {run_id}) has no pending activity {seq}: it has its outcome, "
        f"or seq {seq} is not an activity (see `cairn describe {handle.workflow_id}`)")


async def pause_activity(handle: WorkflowHandle, seq: int, note: str) -> dict[str, Any]:
    """``WorkflowHandle.pause_activity``."""
    seq, note = check_seq(seq), check_note(note)
    run_id = await _open_run_id(handle, "an activity pause")
    got = await handle.client._write(
        lambda c: store.pause_activity(c, run_id=run_id, seq=seq, note=note, by=_who()),
        what=f"pausing activity {seq} of workflow {handle.workflow_id!r}",
        check=f"see `cairn describe {handle.workflow_id}`")
    if got is None:
        raise _no_activity(handle, run_id, seq)
    return {"run_id": run_id, "seq": seq, "activity_type": got.activity_type, "queue": got.queue,
            "running": got.running, "pause": got.pause}


async def unpause_activity(handle: WorkflowHandle, seq: int, reset_attempts: bool) -> dict[str, Any]:
    """``WorkflowHandle.unpause_activity``."""
    seq = check_seq(seq)
    run_id = await _open_run_id(handle, "an activity resume")
    got = await handle.client._write(
        lambda c: store.unpause_activity(c, run_id=run_id, seq=seq, reset_attempts=bool(reset_attempts)),
        what=f"resuming activity {seq} of workflow {handle.workflow_id!r}",
        check=f"see `cairn describe {handle.workflow_id}`")
    if got is None:
        raise _no_activity(handle, run_id, seq)
    return {"run_id": run_id, "seq": seq, "was_paused": got.was_paused, "held_by_run": got.held}


async def fail_activity(handle: WorkflowHandle, seq: int, message: str, type: str,
                        details: Any) -> dict[str, Any]:
    """``WorkflowHandle.fail_activity``."""
    seq = check_seq(seq)
    check_note(message)
    check_identifier(type, "the error type", max_length=MAX_NAME_LENGTH)
    failure = to_payload({"type": type, "message": message, "details": details, "non_retryable": True}, store=False)
    run_id = await _open_run_id(handle, "an activity failure")
    attempts = await handle.client._write(
        lambda c: store.fail_activity(c, run_id=run_id, seq=seq, failure=failure),
        what=f"failing activity {seq} of workflow {handle.workflow_id!r}",
        check=f"see `cairn history {handle.workflow_id}`: an ActivityFailed event says it was recorded")
    if attempts is None:
        raise _no_activity(handle, run_id, seq)
    return {"run_id": run_id, "seq": seq, "attempts": attempts}


# ---------------------------------------------------------------- activity types and queues


def _target(activity_type: str | None, queue: str | None) -> tuple[str, str]:
    if not activity_type and not queue:
        raise InputValidationError("give an activity type, a queue, or both")
    return (check_identifier(activity_type, "the activity type", max_length=MAX_NAME_LENGTH, lookup=True)
            if activity_type else "", check_queue(queue) if queue else "")


async def pause(client: Client, activity_type: str | None, queue: str | None, note: str) -> bool:
    """``Client.pause``."""
    kind, q = _target(activity_type, queue)
    note = check_note(note)
    return await client._read(lambda c: store.pause_activities(
        c, namespace=client.namespace, activity_type=kind, queue=q, note=note, by=_who()))


async def unpause(client: Client, activity_type: str | None, queue: str | None) -> bool:
    """``Client.unpause``."""
    kind, q = _target(activity_type, queue)
    return await client._read(lambda c: store.unpause_activities(
        c, namespace=client.namespace, activity_type=kind, queue=q))


async def list_pauses(client: Client) -> list[Pause]:
    """``Client.list_pauses``."""
    rows = await client._read(lambda c: store.list_pauses(c, client.namespace))
    return [Pause(r.kind, r.workflow_id, r.run_id, r.seq, r.type, r.queue, str(r.pause.get("note") or ""),
                  str(r.pause.get("by") or ""), r.at, r.pause.get("reason"), r.pause.get("retry_state"),
                  r.last_failure, r.attempt) for r in rows]
