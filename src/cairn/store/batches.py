"""Batch operations: cancel, terminate, signal, reset or retry every run a ``--where``
filter matches, durably (``cairn.batches``, ``cairn.batch_targets``, migration 0018).

A batch is created in one statement that freezes its targets: the runs its filter matches
at that moment, so whoever resumes it acts on the same set (runs started later are not
included). It is executed in chunks of up to :data:`CHUNK_SIZE` targets: one transaction
locks the chunk's pending targets in run-id order, acts on each run inside a savepoint of
its own (a run that cannot be acted on rolls back alone and is recorded as failed, with
why), records each target's outcome and adds them to the batch's counts. Acting and
recording commit together, so a run is acted on at most once; a chunk whose executor died
(``kill -9``) left nothing, and the next executor does it again: at least once.

One executor at a time: it holds a session advisory lock on the batch (one connection for
the whole execution), which ends with its connection, so a killed executor's batch is free
at once, with no lease to wait out (as a workflow task's claim is its row lock). Any worker's
maintenance loop resumes running batches nobody holds (:func:`running`, then
:func:`execute`), and so does a client waiting for its batch (``BatchHandle.wait``).

Acting is idempotent per run where a second request would change nothing: a terminate,
cancel or signal of a closed run, a retry of a run that is not failed (or whose workflow id
already has an open run) is *skipped*, not an error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.types.json import Jsonb

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.resets import first_task_seq, plan_reset
from cairn.errors import InputValidationError, Transient, WorkflowAlreadyStarted
from cairn.options import new_run_id
from cairn.store import clock, db, lifecycle, messages, operators, runs
from cairn.store.filters import Filter
from cairn.store.sql import q

__all__ = [
    "CHUNK_SIZE", "KINDS", "LOCK_CLASS", "BatchRow", "Counts", "OutcomeGroup", "Preview", "Target", "cancel",
    "create", "execute", "get", "list_batches", "preview", "running", "summary", "targets",
]

log = logging.getLogger("cairn.batches")

KINDS = ("cancel", "terminate", "signal", "reset", "retry")
STATUSES = ("running", "completed", "failed", "cancelled")
OUTCOMES = ("done", "skipped", "failed", "pending")
CHUNK_SIZE = 100  # targets per transaction: one commit per 100 runs, locks held for one chunk only
LOCK_CLASS = 0x43424154  # 'CBAT': the first key of a batch's advisory lock (the second: its id's hash)
MAX_LOCK_CONFLICTS = 20  # deadlocks in a row before this executor gives the batch back (it stays running)
# Errors of the moment between a chunk and the runs it locks (a deadlock with a worker
# closing a parent, say): the chunk rolls back whole and runs again, smaller.
_CONFLICTS = (pgerr.DeadlockDetected, pgerr.SerializationFailure, pgerr.LockNotAvailable)


@dataclass(frozen=True, slots=True)
class Preview:
    """A dry run: how many runs a filter matches, per status, and the first few."""

    matched: int
    by_status: dict[str, int]
    sample: list[tuple[str, str, str]]  # (workflow id, run id, status), in run-id order


@dataclass(frozen=True, slots=True)
class Counts:
    """A batch's progress: targets frozen, and how many were done, skipped, failed."""

    matched: int
    done: int
    skipped: int
    failed: int

    @property
    def processed(self) -> int:
        return self.done + self.skipped + self.failed


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A batch's row (``get_batch``, ``list_batches``)."""

    batch_id: str
    namespace: str
    kind: str
    filter: str
    params: dict[str, Any]
    status: str
    matched: int
    done: int
    skipped: int
    failed: int
    error: str | None
    executor: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    executing: bool  # an executor holds its lock now (get_batch only)


@dataclass(frozen=True, slots=True)
class OutcomeGroup:
    """Targets of one outcome and detail: how many, and the first few workflow ids."""

    outcome: str
    detail: str
    count: int
    workflow_ids: list[str]


@dataclass(frozen=True, slots=True)
class Target:
    """One target of a batch and what was done to it (outcome ``pending``: not yet)."""

    workflow_id: str
    run_id: str
    outcome: str
    detail: str | None
    new_run_id: str | None
    acted_at: datetime | None


def _where(name: str, flt: Filter) -> sql.Composed:
    return sql.SQL(q(name)).format(where=sql.SQL(flt.sql))


async def preview(conn: db.Conn, namespace: str, flt: Filter, *, sample: int) -> Preview:
    """What a batch with filter ``flt`` would act on; writes nothing."""
    params = {"namespace": namespace, "limit": sample, **flt.params}
    by_status = {str(s): int(n) for s, n in await (await conn.execute(_where("batch_preview", flt), params)
                                                   ).fetchall()}
    rows = await (await conn.execute(_where("batch_preview_sample", flt), params)).fetchall() if sample else []
    return Preview(sum(by_status.values()), by_status, [(str(w), str(r), str(s)) for w, r, s in rows])


async def create(conn: db.Conn, *, batch_id: str, namespace: str, kind: str, filter_text: str, flt: Filter,
                 params: dict[str, Any], created_by: str) -> int:
    """Creates the batch and freezes its targets (``insert_batch``); returns how many."""
    row = await (await conn.execute(_where("insert_batch", flt), {
        "batch_id": batch_id, "namespace": namespace, "kind": kind, "filter": filter_text, "params": Jsonb(params),
        "created_by": created_by, "now": clock.now(conn), **flt.params})).fetchone()
    assert row is not None
    return int(row[0])


def _row(r: Any) -> BatchRow:
    return BatchRow(str(r[0]), *r[1:])


async def get(conn: db.Conn, namespace: str, batch_id: str) -> BatchRow | None:
    r = await (await conn.execute(q("get_batch"), {"namespace": namespace, "batch_id": batch_id,
                                                   "lock_class": LOCK_CLASS})).fetchone()
    return None if r is None else _row(r)


async def list_batches(conn: db.Conn, namespace: str, limit: int) -> list[BatchRow]:
    """The namespace's batches, newest first."""
    return [_row(r) for r in await (await conn.execute(q("list_batches"), {"namespace": namespace,
                                                                           "limit": limit})).fetchall()]


async def summary(conn: db.Conn, batch_id: str, *, limit: int = 20) -> list[OutcomeGroup]:
    """What the batch did, grouped by outcome and reason, largest groups first."""
    rows = await (await conn.execute(q("batch_outcome_summary"), {"batch_id": batch_id, "limit": limit})).fetchall()
    return [OutcomeGroup(str(o), str(d), int(n), list(w)) for o, d, n, w in rows]


async def targets(conn: db.Conn, batch_id: str, *, outcome: str | None, after: str | None, limit: int) -> list[Target]:
    """The batch's targets in run-id order (of one outcome, after run id ``after``)."""
    rows = await (await conn.execute(q("list_batch_targets"), {"batch_id": batch_id, "outcome": outcome, "after": after,
                                                          "limit": limit})).fetchall()
    return [Target(str(w), str(r), str(o), d, str(n) if n else None, a) for w, r, o, d, n, a in rows]


async def cancel(conn: db.Conn, namespace: str, batch_id: str) -> str | None:
    """Cancels a running batch; returns its status now (None: no such batch)."""
    r = await (await conn.execute(q("cancel_batch"), {"namespace": namespace, "batch_id": batch_id,
                                                      "now": clock.now(conn)})).fetchone()
    return None if r is None else str(r[0])


async def running(pool: db.Pool, *, limit: int = 20) -> list[str]:
    """Running batches, oldest first (some may have an executor: :func:`execute` says)."""
    try:
        async with pool.connection() as conn:
            return [str(r[0]) for r in await (await conn.execute(q("running_batches"), {"limit": limit})).fetchall()]
    except psycopg.Error as exc:
        raise db.translate(exc) from None


# ---------------------------------------------------------------- execution

OnChunk = Callable[[Counts], Awaitable[None]]


async def execute(pool: db.Pool, batch_id: str, *, executor: str, chunk_size: int = CHUNK_SIZE,
                  on_chunk: OnChunk | None = None) -> bool:
    """Executes a running batch to its end here, if no one else is: False (nothing done)
    when another executor holds it. ``on_chunk`` is called with the counts after each chunk.

    A batch that cannot go on for a reason of its own (not the database's absence, not a
    lock conflict) is failed, with the error. Stops early, leaving the batch running for the
    next executor, on a lost database or after :data:`MAX_LOCK_CONFLICTS` conflicts in a row.

    Raises:
        DatabaseUnavailable: the database went away (the batch stays running).
        Transient: the runs stayed in conflict (the batch stays running).
    """
    key = {"lock_class": LOCK_CLASS, "batch_id": batch_id}
    try:
        async with pool.connection() as conn:
            locked = await (await conn.execute(q("batch_try_lock"), key)).fetchone()
            if locked is None or not locked[0]:
                return False
            unlocked = False
            try:
                await _execute_locked(conn, batch_id, executor, chunk_size, on_chunk)
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(q("batch_unlock"), key)
                    unlocked = True
                if not unlocked:  # a session that may still hold the lock must not go back to the pool
                    await conn.close()
            return True
    except psycopg.Error as exc:
        raise db.translate(exc) from None


async def _execute_locked(conn: db.Conn, batch_id: str, executor: str, chunk_size: int,
                          on_chunk: OnChunk | None) -> None:
    took = await (await conn.execute(q("batch_take_up"), {"batch_id": batch_id, "executor": executor,
                                                         "now": clock.now(conn)})).fetchone()
    if took is None:
        return  # completed, failed or cancelled meanwhile
    namespace, kind, params = str(took[0]), str(took[1]), dict(took[2])
    size, conflicts = chunk_size, 0
    try:
        while True:
            try:
                counts = await _chunk(conn, batch_id, namespace, kind, params, size)
            except _CONFLICTS as exc:
                conflicts += 1
                if conflicts >= MAX_LOCK_CONFLICTS:
                    raise Transient(f"batch {batch_id}: {conflicts} lock conflicts in a row ({exc.sqlstate}); "
                                    "it stays running for the next executor") from None
                size = max(1, size // 2)  # the chunk rolled back whole: again, smaller
                continue
            if counts is None:
                break
            conflicts, size = 0, min(chunk_size, size * 2)
            if on_chunk is not None:
                await on_chunk(counts)
        await conn.execute(q("finish_batch"), {"batch_id": batch_id, "now": clock.now(conn)})
    except psycopg.Error as exc:
        if db.connection_lost(exc):
            raise
        await _fail(conn, batch_id, f"{type(exc).__name__}: {_first_line(exc)}")
    except (Transient, InputValidationError):
        raise
    except Exception as exc:
        log.exception("batch %s failed", batch_id)
        await _fail(conn, batch_id, f"{type(exc).__name__}: {exc}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


async def _fail(conn: db.Conn, batch_id: str, error: str) -> None:
    log.error("batch %s failed: %s", batch_id, error)
    await conn.execute(q("fail_batch"), {"batch_id": batch_id, "error": error[:2000], "now": clock.now(conn)})


async def _chunk(conn: db.Conn, batch_id: str, namespace: str, kind: str, params: dict[str, Any],
                 size: int) -> Counts | None:
    """One chunk in one transaction; None when no target is pending (or the batch stopped)."""
    async with conn.transaction():
        claimed = await (await conn.execute(q("claim_batch_targets"), {"batch_id": batch_id, "limit": size})
                         ).fetchall()
        if not claimed:
            return None
        outcomes = [await _act_on(conn, kind, namespace, params, str(run_id), str(workflow_id))
                    for run_id, workflow_id in claimed]
        row = await (await conn.execute(q("record_batch_targets"), {
            "batch_id": batch_id, "outcomes": Jsonb(outcomes), "now": clock.now(conn)})).fetchone()
        assert row is not None
        return Counts(*map(int, row))


async def _act_on(conn: db.Conn, kind: str, namespace: str, params: dict[str, Any], run_id: str,
                  workflow_id: str) -> dict[str, Any]:
    """Acts on one run inside a savepoint: its writes, or none of them."""
    try:
        async with conn.transaction():
            outcome, detail, new = await _act(conn, kind, namespace, params, run_id, workflow_id)
    except _CONFLICTS:
        raise  # the chunk again, smaller
    except psycopg.Error as exc:
        if db.connection_lost(exc):
            raise
        outcome, detail, new = "failed", f"database error: {type(exc).__name__}: {_first_line(exc)}", None
    except Exception as exc:  # the run's own trouble (a history the planner refuses...): this run fails alone
        outcome, detail, new = "failed", str(exc) or type(exc).__name__, None
    return {"run_id": run_id, "outcome": outcome, "detail": detail, "new_run_id": new}


async def _act(conn: db.Conn, kind: str, namespace: str, params: dict[str, Any], run_id: str,
               workflow_id: str) -> tuple[str, str | None, str | None]:
    """(outcome, detail, new run id) of acting on one run."""
    row = await runs.run(conn, namespace, workflow_id, run_id)
    if row is None:
        return "skipped", "the run no longer exists", None
    if kind in ("cancel", "terminate", "signal"):
        if row.status != "running":
            return "skipped", f"already {row.status}", None
        reason = str(params.get("reason") or "")
        if kind == "terminate":
            acted = await lifecycle.terminate(conn, run_id, reason)
        elif kind == "cancel":
            acted = await messages.write_input(conn, run_id, h.CANCEL_REQUESTED, {"reason": reason})
        else:
            acted = await messages.write_input(conn, run_id, h.SIGNAL_RECEIVED, params["data"])
        return ("done", None, None) if acted else ("skipped", "closed before it was reached", None)
    new = new_run_id()
    if kind == "retry":
        if row.status not in operators.RETRYABLE_STATUSES:
            return "skipped", f"{row.status}: not failed, cancelled, terminated or timed out", None
        try:
            await operators.retry_in(conn, row, new)
        except WorkflowAlreadyStarted:
            return "skipped", "its workflow id has an open run", None
        return "done", None, new
    to = params.get("to", "last")  # "first", "last" or a seq

    def planner(events: list[Event], pending: list[dict[str, Any]]) -> Any:
        seq = first_task_seq(events) if to == "first" else None if to == "last" else int(to)
        return plan_reset(events, run_id, seq, reapply_signals=bool(params.get("reapply_signals", True)),
                          pending_signals=pending)

    try:
        await operators.reset_in(conn, row, new, planner, reason=str(params.get("reason") or ""))
    except WorkflowAlreadyStarted:
        return "failed", "its workflow id has another open run", None
    except InputValidationError as exc:
        return "failed", str(exc), None
    return "done", None, new
