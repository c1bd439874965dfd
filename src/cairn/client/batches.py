"""Batch operations on the client's side (Temporal's batch operations): cancel, terminate,
signal, reset or retry every run a ``--where`` filter matches.

Everything is checked before anything is written (the filter, the kind, the signal and its
arguments, the reset point, the reason); a preview (:meth:`Client.preview_batch`, the CLI's
``--dry-run``) writes nothing. :meth:`Client.start_batch` creates the batch and freezes its
targets in one statement; it is then executed by any worker's maintenance loop, or by
whoever waits for it (:meth:`BatchHandle.wait`), one executor at a time, in chunks that each
act and record in one transaction (:mod:`cairn.store.batches`), so it survives the death of
whoever was executing it and acts on each run once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cairn.client.messages import signal_data
from cairn.client.operators import check_reason
from cairn.errors import InputValidationError, Transient
from cairn.options import new_run_id, shown
from cairn.store import batches as store
from cairn.store.batches import KINDS, Counts, OutcomeGroup, Target
from cairn.store.filters import parse_filter

if TYPE_CHECKING:
    from cairn.client.client import Client

__all__ = ["KINDS", "BatchDescription", "BatchHandle", "BatchPreview", "Counts", "OutcomeGroup", "Target"]

PREVIEW_SAMPLE = 10  # run ids a preview shows
FOLLOW_SECONDS = 1.0  # how often a waiter that is not executing the batch reads its progress
MAX_BATCH_LIST = 1000
RESET_POINTS = ("first", "last")

ProgressCallback = Callable[[Counts], Awaitable[None] | None]


@dataclass
class BatchPreview:
    """What a batch would act on (nothing is written): runs matched, per status, a sample."""

    kind: str
    filter: str
    matched: int
    by_status: dict[str, int]
    sample: list[dict[str, str]]

    @property
    def open(self) -> int:
        """Runs matched that are running (cancel, terminate and signal act on these only)."""
        return self.by_status.get("running", 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dry_run": True}


@dataclass
class BatchDescription:
    """A batch: what it does, its status and counts, and what it did, grouped by reason.

    Attributes:
        executing: an executor (a worker, a waiting client) holds the batch now.
        outcomes: per outcome (done, skipped, failed) and reason: how many runs and the
            first few workflow ids, largest groups first.
    """

    id: str
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
    executing: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    outcomes: list[OutcomeGroup] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.matched - self.done - self.skipped - self.failed

    @property
    def counts(self) -> Counts:
        return Counts(self.matched, self.done, self.skipped, self.failed)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["pending"] = self.pending
        return out

    @classmethod
    def of(cls, row: store.BatchRow, outcomes: list[OutcomeGroup] | None = None) -> BatchDescription:
        return cls(row.batch_id, row.kind, row.filter, row.params, row.status, row.matched, row.done, row.skipped,
                   row.failed, row.error, row.executor, row.executing, row.created_by, row.created_at,
                   row.updated_at, row.finished_at, outcomes or [])


def identity(role: str) -> str:
    """Who executes or created a batch, for describe: ``host:pid (role)``."""
    return f"{socket.gethostname()}:{os.getpid()} ({role})"


def batch_params(kind: str, *, reason: str = "", signal: str | Callable[..., Any] | None = None,
                 signal_args: Sequence[Any] = (), reset_to: str | int | None = None,
                 reapply_signals: bool = True) -> dict[str, Any]:
    """A batch's parameters, checked; what each kind takes and nothing else.

    Raises:
        InputValidationError: an unknown kind, a missing or superfluous argument, a bad
            signal name or argument, reset point or reason.
    """
    if kind not in KINDS:
        raise InputValidationError(f"a batch's kind is one of {', '.join(KINDS)}, not {shown(str(kind))}")
    check_reason(reason)
    if kind != "signal" and (signal is not None or signal_args):
        raise InputValidationError(f"a {kind} batch takes no signal")
    if kind != "reset" and reset_to is not None:
        raise InputValidationError(f"a {kind} batch takes no reset point")
    if kind == "retry" and reason:
        raise InputValidationError("a retry batch takes no reason (a retried run starts from its input)")
    if kind == "signal":
        if signal is None:
            raise InputValidationError("a signal batch needs the signal's name")
        if isinstance(signal_args, str | bytes) or not isinstance(signal_args, Sequence):
            raise InputValidationError("signal_args must be a sequence of the signal's arguments")
        name, data = signal_data(signal, tuple(signal_args))
        return {"signal": name, "data": data}
    if kind == "reset":
        return {"to": _reset_point(reset_to), "reason": reason, "reapply_signals": bool(reapply_signals)}
    return {"reason": reason} if kind != "retry" else {}


def _reset_point(to: str | int | None) -> str | int:
    if to is None:
        raise InputValidationError("a reset batch needs a reset point: 'first', 'last' or a seq")
    if isinstance(to, str) and to in RESET_POINTS:
        return to
    if isinstance(to, int) and not isinstance(to, bool) and to >= 1:
        return to
    raise InputValidationError(f"the reset point is 'first', 'last' or a positive seq, not {to!r}")


def check_where(where: str) -> str:
    if not isinstance(where, str) or not where.strip():
        raise InputValidationError("a batch needs a filter (where), e.g. WorkflowType = 'order' AND "
                                   "Status = 'running'")
    parse_filter(where)
    return where


async def preview(client: Client, kind: str, where: str, params: dict[str, Any]) -> BatchPreview:
    """What :func:`start` would act on; writes nothing."""
    del params  # checked by the caller: a preview of a batch that could not start is refused too
    flt = parse_filter(check_where(where))
    got = await client._read(lambda c: store.preview(c, client.namespace, flt, sample=PREVIEW_SAMPLE))
    return BatchPreview(kind, where, got.matched, got.by_status,
                        [{"workflow_id": w, "run_id": r, "status": s} for w, r, s in got.sample])


async def start(client: Client, kind: str, where: str, params: dict[str, Any]) -> BatchHandle:
    """Creates the batch and freezes its targets; returns its handle (see the module docstring)."""
    flt = parse_filter(check_where(where))
    batch_id = new_run_id()
    if "reason" in params and not params["reason"]:
        params = {**params, "reason": f"batch {batch_id}"}
    await client._write(lambda c: store.create(c, batch_id=batch_id, namespace=client.namespace, kind=kind,
                                               filter_text=where, flt=flt, params=params,
                                               created_by=identity("client")),
                        what=f"creating a {kind} batch",
                        check="see `cairn batch list` before starting it again")
    return BatchHandle(client, batch_id)


class BatchHandle:
    """A handle on a batch: describe, wait (executing it here if nobody else is), cancel.

    Attributes:
        id: the batch id.
    """

    def __init__(self, client: Client, batch_id: str) -> None:
        self.client = client
        self.id = _check_id(batch_id)

    def __repr__(self) -> str:
        return f"BatchHandle(id={self.id!r})"

    async def _row(self) -> store.BatchRow:
        row = await self.client._read(lambda c: store.get(c, self.client.namespace, self.id))
        if row is None:
            raise InputValidationError(f"no batch {self.id} in namespace {self.client.namespace!r}")
        return row

    async def describe(self) -> BatchDescription:
        """The batch's status, counts, and what it did grouped by outcome and reason.

        Raises:
            InputValidationError: no such batch in the client's namespace.
        """
        row = await self._row()
        outcomes = await self.client._read(lambda c: store.summary(c, self.id))
        return BatchDescription.of(row, outcomes)

    async def progress(self) -> Counts:
        """The batch's counts (one cheap read)."""
        row = await self._row()
        return Counts(row.matched, row.done, row.skipped, row.failed)

    async def targets(self, *, outcome: str | None = None, after: str | None = None,
                      limit: int = 100) -> list[Target]:
        """The batch's targets in run-id order: each run, its outcome (done, skipped, failed,
        pending) and why, and a reset's or retry's new run. ``after``: the last run id of
        the previous page."""
        if outcome is not None and outcome not in store.OUTCOMES:
            raise InputValidationError(f"outcome is one of {', '.join(store.OUTCOMES)}, not {outcome!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InputValidationError(f"limit must be a whole number from 1 to 10000, not {limit!r}")
        if after is not None:
            _check_id(after, "run id")
        await self._row()
        return await self.client._read(lambda c: store.targets(c, self.id, outcome=outcome, after=after, limit=limit))

    async def cancel(self) -> str:
        """Stops the batch after the chunk under way (the runs it acted on stay acted on).
        Returns its status: ``cancelled``, or how it had already ended.

        Raises:
            InputValidationError: no such batch.
        """
        status = await self.client._write(lambda c: store.cancel(c, self.client.namespace, self.id),
                                          what=f"cancelling batch {self.id}",
                                          check=f"see `cairn batch describe {self.id}`")
        if status is None:
            raise InputValidationError(f"no batch {self.id} in namespace {self.client.namespace!r}")
        return status

    async def wait(self, *, timeout: float | None = None, on_progress: ProgressCallback | None = None,
                   execute: bool = True, chunk_size: int = store.CHUNK_SIZE) -> BatchDescription:
        """Waits until the batch has ended and returns its description. With ``execute``
        (the default) it executes the batch in this process whenever nobody else does (so
        it finishes with no worker running, and takes over from an executor that died);
        otherwise it follows it. ``on_progress`` gets the counts after each chunk (or
        each read, when following).

        Raises:
            TimeoutError: it was still running after ``timeout`` seconds.
            DatabaseUnavailable: the database went away (the batch stays running).
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= 10_000:
            raise InputValidationError(f"chunk_size must be a whole number from 1 to 10000, not {chunk_size!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        shown_counts: Counts | None = None

        async def report(counts: Counts) -> None:
            nonlocal shown_counts
            if on_progress is not None and counts != shown_counts:
                shown_counts = counts
                got = on_progress(counts)
                if got is not None:
                    await got

        while True:
            if execute:
                with contextlib.suppress(Transient):  # lock conflicts in a row: it stays running; again soon
                    await store.execute(self.client.pool, self.id, executor=identity("client"),
                                        chunk_size=chunk_size, on_chunk=report)
            row = await self._row()
            await report(Counts(row.matched, row.done, row.skipped, row.failed))
            if row.status != "running":
                return await self.describe()
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"batch {self.id} is still running after {timeout} s")
            await asyncio.sleep(FOLLOW_SECONDS if deadline is None
                                else max(0.0, min(FOLLOW_SECONDS, deadline - loop.time())))


def _check_id(value: str, what: str = "batch id") -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InputValidationError(f"{shown(str(value))} is not a {what}") from None


async def list_batches(client: Client, limit: int) -> list[BatchDescription]:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BATCH_LIST:
        raise InputValidationError(f"limit must be a whole number from 1 to {MAX_BATCH_LIST}, not {limit!r}")
    return [BatchDescription.of(r) for r in await client._read(
        lambda c: store.list_batches(c, client.namespace, limit))]
