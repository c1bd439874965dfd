"""Workers you can see: each worker's row in ``cairn.workers`` (0017), its heartbeat on a
connection of its own, the listing (``cairn workers``), and the work of a run that no live
worker serves (``describe``, ``cairn start``).

A worker is live while its last heartbeat's ``live_until`` (the heartbeat plus that
worker's liveness window) is ahead of the database's clock and it has not stopped. The
heartbeat never uses the engine's pool: it cannot wait behind claims and records, and a
slow heartbeat cannot hold up a claim.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cairn.store import db
from cairn.store.db import CONNECTION_OPTIONS, Conn
from cairn.store.sql import q

log = logging.getLogger("cairn.worker")

# The heartbeat session's statements give up after this long: a heartbeat that cannot be
# written soon is skipped (the next one says the same), not queued.
HEARTBEAT_STATEMENT_TIMEOUT_MS = 5_000
HEARTBEAT_OPTIONS = f"{CONNECTION_OPTIONS} -c statement_timeout={HEARTBEAT_STATEMENT_TIMEOUT_MS}"


@dataclass(frozen=True, slots=True)
class Registration:
    """What a worker says about itself, the same at every heartbeat."""

    namespace: str
    identity: str
    host: str
    pid: int
    queues: list[str]
    workflow_types: list[str]
    activity_types: list[str]
    workflow_slots: int
    activity_slots: int
    version: str


@dataclass(frozen=True, slots=True)
class Load:
    """What a worker is doing at a heartbeat: slots in use and its counters."""

    workflow_slots_used: int
    activity_slots_used: int
    workflow_tasks: int
    activities_completed: int
    activities_failed: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker's row (``list_workers``), as ``cairn workers`` shows it.

    ``status`` is ``live`` (a heartbeat within its liveness window), ``stale`` (silent past
    it: killed, wedged or cut off) or ``stopped`` (a graceful stop); ``heartbeat_age`` is the
    seconds since the last heartbeat, by the database's clock.
    """

    namespace: str
    identity: str
    host: str
    pid: int
    queues: list[str]
    workflow_types: list[str]
    activity_types: list[str]
    workflow_slots: int
    workflow_slots_used: int
    activity_slots: int
    activity_slots_used: int
    workflow_tasks: int
    activities_completed: int
    activities_failed: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    live_until: datetime
    stopped_at: datetime | None
    status: str
    heartbeat_age: float

    def to_json(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class Unserved:
    """Work that no live worker serves (``unserved_work``): a run's workflow type or one
    of its pending activities' types, on its queue. ``last_*`` describe the worker that
    served it last, if its row is still kept; ``registered_at`` when the type registry last
    saw the type registered on the queue (None: never)."""

    kind: str  # "workflow" | "activity"
    type: str
    queue: str
    last_worker: str | None
    last_host: str | None
    last_pid: int | None
    last_heartbeat: datetime | None
    last_stopped: datetime | None
    last_heartbeat_age: float | None
    registered_at: datetime | None


class HeartbeatSession:
    """The worker's own autocommit session for its row: each statement is its own short
    transaction, never queued behind the engine's pool. Reconnects on the next call after
    a failure."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Conn | None = None

    async def _execute(self, name: str, params: dict[str, Any]) -> Any:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                                   options=HEARTBEAT_OPTIONS)
            cur = await self._conn.execute(q(name), params)
            return await cur.fetchone() if cur.description else cur.rowcount
        except psycopg.Error as exc:
            await self.close()
            raise db.translate(exc) from None

    async def beat(self, reg: Registration, load: Load, *, started_at: datetime | None,
                   live_seconds: float) -> datetime:
        """Writes the worker's row (registering it on the first call, ``started_at`` None);
        returns its ``started_at``."""
        row = await self._execute("worker_heartbeat", {**asdict(reg), **asdict(load),
                                                       "started_at": started_at, "live_seconds": live_seconds})
        return row[0]  # type: ignore[no-any-return]

    async def stopped(self, reg: Registration, load: Load, *, started_at: datetime) -> None:
        """Marks the row stopped (a graceful stop, after the drain)."""
        await self._execute("worker_stopped", {"namespace": reg.namespace, "identity": reg.identity,
                                               "started_at": started_at, "workflow_tasks": load.workflow_tasks,
                                               "activities_completed": load.activities_completed,
                                               "activities_failed": load.activities_failed})

    async def forget(self, *, retention_seconds: float) -> int:
        """Removes the rows of workers stopped or stale for longer than ``retention_seconds``;
        returns how many."""
        return int(await self._execute("forget_workers", {"retention_seconds": retention_seconds}))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except psycopg.Error as exc:  # closing a broken session: nothing left to do
                log.debug("closing the heartbeat session: %s", exc)


async def list_workers(conn: Conn, namespace: str, *, include_all: bool, queue: str | None) -> list[WorkerInfo]:
    """A namespace's workers (``list_workers``): live ones, or with ``include_all`` every row kept."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("list_workers"), {"namespace": namespace, "include_all": include_all, "queue": queue})
    return [WorkerInfo(**row) for row in await cur.fetchall()]


async def unserved(conn: Conn, namespace: str, *, run_id: str | None = None,
                   work: Sequence[tuple[str, str, str]] = ()) -> list[Unserved]:
    """Of run ``run_id``'s work and of the ``(kind, type, queue)`` triples in ``work``, what no
    live worker serves."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("unserved_work"), {
        "run_id": run_id, "namespace": namespace, "kinds": [w[0] for w in work], "types": [w[1] for w in work],
        "queues": [w[2] for w in work]})
    return [Unserved(**row) for row in await cur.fetchall()]
