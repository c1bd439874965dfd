"""Retention and purge: closed runs removed whole, in small paced chunks, optionally
archived first (:mod:`cairn.store.archive`); migration 0020.

A namespace's settings row (``cairn.namespaces``) holds its retention (NULL: forever, the
default) and its archive (a ``file://`` directory, or none). Two ways in:

* the workers' retention pass (:func:`purge_expired`, from ``cairn.worker.retention``):
  one worker at a time (a session advisory lock, which dies with its connection), for every
  namespace with a retention, removes the closed runs whose ``closed_at`` is older;
* an operator's purge (:func:`purge`, ``cairn purge --where``): the closed runs a filter
  matches, optionally only those closed before a cutoff.

Either way a chunk is one transaction: lock up to :data:`CHUNK_SIZE` runs in close order
(``FOR UPDATE SKIP LOCKED``: a run an operator holds is passed over), read their rows and
events as archive lines and write the chunk's file durably (when archiving), then remove
the runs with everything that hangs off them (``cairn.purge_closed_runs``, which touches
closed runs only), and commit. A process killed in between rolls the removal back; the file
it wrote is replaced by the next pass (see :mod:`cairn.store.archive`). A run is held back
while its parent is open, or while a running batch has yet to act on it. Open runs are never
purged.

Pacing: after each chunk the purge sleeps in proportion to the time the chunk took
(``busy`` is the fraction of time spent in chunks), so a database slowed by other work
slows the purge with it, and the hot path keeps the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cairn import payloads
from cairn.errors import InputValidationError
from cairn.store import archive, clock, db
from cairn.store import payloads as stored
from cairn.store.filters import Filter
from cairn.store.sql import q

__all__ = [
    "BUSY_BACKGROUND", "BUSY_OPERATOR", "CHUNK_SIZE", "LOCK_CLASS", "PurgePreview", "PurgeProgress", "cutoff_of",
    "preview", "purge", "purge_expired", "purge_in", "sweep", "sweep_payloads", "unlinked_payloads",
]

log = logging.getLogger("cairn.retention")

CHUNK_SIZE = 500  # runs per transaction (about 3,000 events for runs of six)
BUSY_BACKGROUND = 0.25  # the retention pass spends at most this fraction of its time in chunks
BUSY_OPERATOR = 0.5  # `cairn purge`, unless told otherwise
LOCK_CLASS = 0x43524554  # 'CRET': the retention pass's advisory lock (second key 0)
SAMPLE = 10  # runs a preview shows
ALL_RUNS = Filter("true", {})
_START = (datetime(1, 1, 1, tzinfo=UTC), "00000000-0000-0000-0000-000000000000")


@dataclass(frozen=True, slots=True)
class PurgePreview:
    """What a purge would do, writing nothing: per status, the runs it would remove, and
    the matched runs it would not: open, closed after the cutoff, held back."""

    purge: dict[str, int]
    open: int
    young: int
    held: int
    sample: list[tuple[str, str, str, datetime]]  # (workflow id, run id, status, closed at)
    cutoff: datetime

    @property
    def matched(self) -> int:
        return sum(self.purge.values())


@dataclass
class PurgeProgress:
    """A purge so far: runs and events removed, chunks, archive files written."""

    runs: int = 0
    events: int = 0
    chunks: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Runs removed per second of wall time (pauses included)."""
        return self.runs / self.seconds if self.seconds > 0 else 0.0


def _where(name: str, flt: Filter) -> sql.Composed:
    return sql.SQL(q(name)).format(where=sql.SQL(flt.sql))


async def cutoff_of(conn: db.Conn, older_than: timedelta | None) -> datetime:
    """Now (the database's, or the test clock's), minus ``older_than``."""
    r = await (await conn.execute(q("purge_clock"), {"now": clock.now(conn)})).fetchone()
    assert r is not None
    now: datetime = r[0]
    return now - older_than if older_than is not None else now


async def preview(conn: db.Conn, namespace: str, flt: Filter, *, older_than: timedelta | None) -> PurgePreview:
    """A purge's dry run (:func:`purge` with the same arguments would remove ``matched``
    runs, give or take the runs that close or open meanwhile)."""
    cutoff = await cutoff_of(conn, older_than)
    params = {"namespace": namespace, "cutoff": cutoff, "limit": SAMPLE, **flt.params}
    counts: dict[str, dict[str, int]] = {}
    for what, status, n in await (await conn.execute(_where("purge_preview", flt), params)).fetchall():
        counts.setdefault(str(what), {})[str(status)] = int(n)
    sample = [(str(w), str(r), str(s), c) for w, r, s, c in
              await (await conn.execute(_where("purge_sample", flt), params)).fetchall()]
    return PurgePreview(counts.get("purge", {}), sum(counts.get("open", {}).values()),
                        sum(counts.get("young", {}).values()), sum(counts.get("held", {}).values()), sample, cutoff)


OnChunk = Callable[[PurgeProgress], Awaitable[None] | None]


async def purge(conn: db.Conn, namespace: str, *, flt: Filter = ALL_RUNS, cutoff: datetime,
                archive_dir: Path | None = None, chunk_size: int = CHUNK_SIZE, busy: float = BUSY_OPERATOR,
                on_chunk: OnChunk | None = None, stop: asyncio.Event | None = None) -> PurgeProgress:
    """Removes the closed runs of ``namespace`` that ``flt`` matches and that closed before
    ``cutoff``, chunk by chunk (see the module docstring), archiving each chunk first into
    ``archive_dir`` when given. ``conn`` must be outside a transaction (autocommit).

    Raises:
        OSError: the archive could not be written (that chunk's runs stay).
        DatabaseUnavailable: the database went away (chunks committed so far stay done).
    """
    progress = PurgeProgress()
    started = time.monotonic()
    after = _START
    busy = min(max(busy, 0.01), 1.0)
    try:
        while stop is None or not stop.is_set():
            t0 = time.monotonic()
            done = await _chunk(conn, namespace, flt, cutoff, after, chunk_size, archive_dir)
            if done is None:
                break
            runs, events, after, path = done
            progress.runs += runs
            progress.events += events
            progress.chunks += 1
            if path is not None:
                progress.files.append(str(path))
            progress.seconds = time.monotonic() - started
            if on_chunk is not None:
                maybe = on_chunk(progress)
                if maybe is not None:
                    await maybe
            if busy < 1.0:
                pause = (time.monotonic() - t0) * (1.0 - busy) / busy
                if stop is None:
                    await asyncio.sleep(pause)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)
    except psycopg.Error as exc:
        raise db.translate(exc) from None
    progress.seconds = time.monotonic() - started
    return progress


async def purge_in(pool: db.Pool, namespace: str, **kwargs: Any) -> PurgeProgress:
    """:func:`purge` on a connection of ``pool``."""
    try:
        async with pool.connection() as conn:
            return await purge(conn, namespace, **kwargs)
    except psycopg.Error as exc:
        raise db.translate(exc) from None


async def _chunk(conn: db.Conn, namespace: str, flt: Filter, cutoff: datetime, after: tuple[datetime, str],
                 limit: int, archive_dir: Path | None) -> tuple[int, int, tuple[datetime, str], Path | None] | None:
    """One chunk in one transaction; None when nothing is left to purge."""
    async with conn.transaction():
        locked = await (await conn.execute(_where("purge_lock_chunk", flt), {
            "namespace": namespace, "cutoff": cutoff, "after_at": after[0], "after_id": after[1], "limit": limit,
            **flt.params})).fetchall()
        if not locked:
            return None
        ids = [r[0] for r in locked]
        last = (locked[-1][1], str(locked[-1][0]))
        path = None
        if archive_dir is not None:
            docs = await (await conn.execute(q("purge_documents"), {"run_ids": ids})).fetchall()
            first_id, first_closed = str(docs[0][0]), docs[0][1]
            # Written (and fsync-ed) before the delete commits; off the event loop.
            lines = await _self_contained(conn, [str(d[2]) for d in docs])
            path = await asyncio.to_thread(archive.write_chunk, archive_dir, namespace, first_id, first_closed, lines)
        r = await (await conn.execute(q("purge_runs"), {"run_ids": ids})).fetchone()
        assert r is not None
    return int(r[0]), int(r[1]), last, path


async def _self_contained(conn: db.Conn, lines: list[str]) -> list[str]:
    """Archive lines with their stored payloads resolved (one statement for the chunk): an
    archive must replay after its runs, and their payloads, are gone."""
    marked = [i for i, line in enumerate(lines) if payloads.REF_KEY in line]
    if not marked:
        return lines
    docs = await stored.resolve(conn, [json.loads(lines[i]) for i in marked])
    out = list(lines)
    for i, doc in zip(marked, docs, strict=True):
        out[i] = json.dumps(doc, ensure_ascii=False)
    return out


async def purge_expired(pool: db.Pool, *, busy: float = BUSY_BACKGROUND, chunk_size: int = CHUNK_SIZE,
                        stop: asyncio.Event | None = None) -> dict[str, PurgeProgress] | None:
    """The retention pass: for every namespace with a retention, removes (and archives,
    when it has an archive) the closed runs past it. None when another worker's pass holds
    the lock. A namespace whose archive cannot be written is skipped, its runs kept, and
    logged; the others go on.
    """
    key = {"lock_class": LOCK_CLASS}
    out: dict[str, PurgeProgress] = {}
    try:
        async with pool.connection() as conn:
            locked = await (await conn.execute(q("retention_try_lock"), key)).fetchone()
            if locked is None or not locked[0]:
                return None
            unlocked = False
            try:
                due = await (await conn.execute(q("retention_due"), {"now": clock.now(conn)})).fetchall()
                for namespace, archive_uri, cutoff in due:
                    try:
                        directory = archive.path_of(archive_uri) if archive_uri else None
                        out[namespace] = await purge(conn, namespace, cutoff=cutoff, archive_dir=directory,
                                                     chunk_size=chunk_size, busy=busy, stop=stop)
                    except (OSError, InputValidationError) as exc:
                        log.error("retention of namespace %s: cannot archive to %s (%s); its runs are kept",
                                  namespace, archive_uri, exc)
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(q("retention_unlock"), key)
                    unlocked = True
                if not unlocked:  # a session that may still hold the lock must not go back to the pool
                    await conn.close()
    except psycopg.Error as exc:
        raise db.translate(exc) from None
    return out


# ---------------------------------------------------------------- the payload sweep (0026)


async def unlinked_payloads(conn: db.Conn, *, grace: timedelta = stored.SWEEP_GRACE) -> stored.PayloadSweep:
    """What :func:`sweep` would remove now (a full scan: an operator's question)."""
    cutoff = await cutoff_of(conn, grace)
    row = await (await conn.execute(q("unlinked_payloads"), {"cutoff": cutoff})).fetchone()
    assert row is not None
    return stored.PayloadSweep(int(row[0]), int(row[1]), cutoff)


async def sweep(conn: db.Conn, *, after: bytes = b"", slices: int | None = None,
                grace: timedelta = stored.SWEEP_GRACE, scan: int | None = None) -> tuple[stored.PayloadSweep, bytes]:
    """Removes the payloads no run links, stored more than ``grace`` ago: ``slices`` slices
    of ``scan`` payloads in hash order from hash ``after`` (None: to the end of the table),
    each one statement (``conn`` in autocommit: each its own transaction). Returns what went
    and the hash the next sweep goes on from (``b""``: the table's start). A payload being
    linked meanwhile is passed over, never broken (migration 0026)."""
    cutoff = await cutoff_of(conn, grace)
    swept = swept_bytes = 0
    done = 0
    while slices is None or done < slices:
        params = {"after": after, "scan": scan or stored.SWEEP_SCAN, "cutoff": cutoff}
        row = await (await conn.execute(q("sweep_payloads"), params)).fetchone()
        assert row is not None
        last, n, size = row
        swept += int(n)
        swept_bytes += int(size)
        done += 1
        if last is None:  # the end of the table: the next sweep starts over
            after = b""
            break
        after = bytes(last)
    return stored.PayloadSweep(swept, swept_bytes, cutoff), after


async def sweep_payloads(pool: db.Pool, **kwargs: Any) -> tuple[stored.PayloadSweep, bytes]:
    """:func:`sweep` (stored payloads no run links) on a connection of ``pool``: the
    retention pass's second part."""
    try:
        async with pool.connection() as conn:
            return await sweep(conn, **kwargs)
    except psycopg.Error as exc:
        raise db.translate(exc) from None
