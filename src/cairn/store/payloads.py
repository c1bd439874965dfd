"""The payload store's statements (migration 0022; ``cairn.payloads`` makes the references).

Writing: :func:`links` finds the references in what a transaction is about to write (only in
a process that has made one: ``cairn.payloads.made``), :func:`save` stores their payloads and
links them to their runs in that transaction, before the event that refers to them.

Reading: every read of payload-bearing rows (history, the inbox, activity inputs, outcomes)
resolves the references it met, in one statement per read, however many events refer
(:func:`resolve`). Small payloads cost no statement and no walk: psycopg's ``json.loads``
is replaced by one that counts the values whose text holds the reference key (a substring
test of bytes already in memory, before the parse that follows anyway) and a read resolves
only when the count moved while it read (:func:`marked`, :func:`resolve_if`). A false
alarm (another task read a reference meanwhile) costs a walk, never a statement.

Sweeping (``cairn.store.retention.sweep``, migration 0026): a payload that no run links (a
purge passed over it while a writer that then rolled back was linking it) is removed once
older than :data:`SWEEP_GRACE`, a slice of :data:`SWEEP_SCAN` payloads in hash order per
statement; by the workers' retention pass (a few slices each) and ``cairn db payloads --sweep``.

Resolved values are as ``jsonb`` would have returned them (``cairn.payloads.jsonb_form``: key order,
numbers), so workflow code sees the same data live, on replay and from the fast path.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads

from cairn import payloads
from cairn.engine.history import Event
from cairn.errors import DatabaseError
from cairn.store.sql import q

_MARK = payloads.REF_KEY.encode()
_SEEN = [0]  # JSON values read (any connection) whose text holds the reference key
MAX_NESTING = 8  # references inside stored payloads (an LLM call's argument holds its messages')

Link = tuple[str, str]  # (run id, reference)


# ---------------------------------------------------------------- detection on read


def _loads(data: str | bytes) -> Any:
    """psycopg's ``json.loads`` for every json and jsonb value read (its loaders hand it
    bytes), counting the values whose text holds the reference key: one substring test."""
    if _MARK in data if isinstance(data, bytes) else payloads.REF_KEY in data:
        _SEEN[0] += 1
    return json.loads(data)


set_json_loads(_loads)


def marked() -> int:
    """The count of JSON values read with a reference in them; take it before a read."""
    return _SEEN[0]


# ---------------------------------------------------------------- writing


# (run, reference) pairs this process saw committed: a run's link holds its payload until
# the run is purged, and only closed runs are, so they need not be sent again (the N-th call
# of a conversation sends its new messages, not all N). Oldest dropped first past the bound.
COMMITTED_LINKS = 100_000
_committed: OrderedDict[Link, None] = OrderedDict()


def remember(found: Iterable[Link]) -> None:
    """After a commit: these links exist (see :data:`COMMITTED_LINKS`)."""
    for pair in found:
        _committed[pair] = None
        _committed.move_to_end(pair)
    while len(_committed) > COMMITTED_LINKS:
        _committed.popitem(last=False)


def links(run_id: str, data: Any, out: list[Link] | None = None) -> list[Link]:
    """The (run, reference) pairs of ``data``, which ``run_id``'s rows are about to hold,
    but those already committed; nothing (and no walk) in a process that never made a
    reference."""
    out = [] if out is None else out
    if payloads.made():
        out.extend(pair for ref in payloads.find_refs(data) if (pair := (run_id, ref)) not in _committed)
    return out


def _digest(ref: str) -> bytes:
    return base64.urlsafe_b64decode(ref + "=")


def digests(refs: Iterable[str]) -> list[bytes]:
    """The hashes (``cairn.payloads.hash``) of references."""
    return [_digest(ref) for ref in refs]


def save_params(found: list[Link]) -> dict[str, Any]:
    """``save_payloads``'s parameters: the payloads this process holds (a payload it no
    longer holds was stored by an earlier write: the link's foreign key says if not), and
    the links, nested references included."""
    hashes: list[bytes] = []
    blobs: list[bytes] = []
    sizes: list[int] = []
    run_ids: list[str] = []
    link_hashes: list[bytes] = []
    linked: set[Link] = set()
    sent: set[str] = set()
    pending = list(found)
    while pending:
        run_id, ref = pending.pop()
        if (run_id, ref) in linked:
            continue
        linked.add((run_id, ref))
        if (run_id, ref) in _committed:  # a nested one linked before
            continue
        run_ids.append(run_id)
        link_hashes.append(_digest(ref))
        held = payloads.local(ref)
        if held is None:
            continue
        if ref not in sent:
            sent.add(ref)
            hashes.append(_digest(ref))
            blobs.append(held.blob)
            sizes.append(held.size)
        # a stored payload's own references (an LLM call's messages) belong to the run too
        pending.extend((run_id, inner) for inner in held.refs)
    return {"hashes": hashes, "blobs": blobs, "sizes": sizes, "run_ids": run_ids, "link_hashes": link_hashes}


async def save(conn: psycopg.AsyncConnection[Any], found: list[Link]) -> list[Link]:
    """Stores the payloads of ``found`` and links them, in the caller's transaction; returns
    the links, nested ones included (for :func:`remember` once it commits)."""
    if not found:
        return found
    params = save_params(found)
    await conn.execute(q("save_payloads"), params)
    pairs = zip(params["run_ids"], params["link_hashes"], strict=True)
    return [(run_id, ref_of_digest(digest)) for run_id, digest in pairs]


def ref_of_digest(digest: bytes) -> str:
    """The reference's hash of a ``cairn.payloads.hash`` (the inverse of :func:`digests`)."""
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def save_sync(conn: psycopg.Connection[Any], found: list[Link]) -> None:
    """:func:`save` on a synchronous connection."""
    if found:
        conn.execute(q("save_payloads"), save_params(found))


def event_links(run_id: str, events: Iterable[Any]) -> list[Link]:
    """The links of a batch of events (dicts with ``data``, or :class:`Event`)."""
    out: list[Link] = []
    if payloads.made():
        for ev in events:
            links(run_id, ev.data if isinstance(ev, Event) else ev.get("data"), out)
    return out


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class PayloadStats:
    """The payload store's size (``cairn db payloads``): payloads, their bytes as JSON and
    as stored (compressed), and the runs that refer to them; of one run, if asked."""

    payloads: int
    json_bytes: int
    stored_bytes: int
    runs: int

    def to_json(self) -> dict[str, int]:
        return {"payloads": self.payloads, "json_bytes": self.json_bytes, "stored_bytes": self.stored_bytes,
                "runs": self.runs}


async def stats(conn: psycopg.AsyncConnection[Any], run_id: str | None = None) -> PayloadStats:
    """The store's size, or what run ``run_id`` refers to."""
    cur = await conn.execute(q("payload_stats" if run_id is None else "run_payload_stats"), {"run_id": run_id})
    row = await cur.fetchone()
    assert row is not None
    return PayloadStats(*(int(v) for v in row))


async def values(conn: psycopg.AsyncConnection[Any], refs: set[str]) -> dict[str, Any]:
    """The values of ``refs`` (and of the references inside them), each as jsonb returns
    JSON: from this process when it made them, else one statement per level of nesting."""
    out: dict[str, Any] = {}
    wanted = set(refs)
    for _ in range(MAX_NESTING):
        missing = []
        raw: dict[str, Any] = {}
        for ref in wanted:
            held = payloads.local(ref)
            if held is not None:
                raw[ref] = payloads.decode(held.blob)
            else:
                missing.append(ref)
        if missing:
            cur = await conn.execute(q("read_payloads"), {"hashes": [_digest(r) for r in missing]})
            for digest, blob, _encoding in await cur.fetchall():
                raw[ref_of_digest(bytes(digest))] = payloads.decode(bytes(blob))
        lost = [r for r in missing if r not in raw]
        if lost:
            raise DatabaseError(f"stored payload(s) {', '.join(sorted(lost))} are missing from cairn.payloads")
        inner: set[str] = set()
        for ref, value in raw.items():
            out[ref] = payloads.jsonb_form(value)
            payloads.find_refs(value, inner)
        wanted = inner - out.keys()
        if not wanted:
            break
    return _closed(out)


def _closed(values_: dict[str, Any]) -> dict[str, Any]:
    """Each value with the references inside it replaced (values hold each other's)."""
    done: dict[str, Any] = {}

    def full(ref: str, depth: int = 0) -> Any:
        if ref not in done:
            value = values_[ref]
            inner = payloads.find_refs(value)
            if inner and depth < MAX_NESTING:
                value = payloads.replace_refs(value, {r: full(r, depth + 1) for r in inner if r in values_})
            done[ref] = value
        return done[ref]

    for ref in values_:
        full(ref)
    return done


async def resolve(conn: psycopg.AsyncConnection[Any], data: Any) -> Any:
    """``data`` with every reference in it replaced by its value."""
    refs = payloads.find_refs(data)
    if not refs:
        return data
    return payloads.replace_refs(data, await values(conn, refs))


async def resolve_if(conn: psycopg.AsyncConnection[Any], before: int, data: Any) -> Any:
    """:func:`resolve`, only if a reference was read since ``marked()`` was ``before``."""
    if _SEEN[0] == before:
        return data
    return await resolve(conn, data)


async def resolve_events(conn: psycopg.AsyncConnection[Any], before: int, events: list[Event]) -> list[Event]:
    """A history read's events, resolved in one statement (if a reference was read)."""
    if _SEEN[0] == before:
        return events
    refs: set[str] = set()
    for ev in events:
        payloads.find_refs(ev.data, refs)
    if not refs:
        return events
    found = await values(conn, refs)
    return [Event(ev.seq, ev.type, payloads.replace_refs(ev.data, found), ev.at) for ev in events]


def resolve_sync(conn: psycopg.Connection[Any], data: Any) -> Any:
    """:func:`resolve` on a synchronous connection (one level of nesting per statement)."""
    for _ in range(MAX_NESTING):
        refs = payloads.find_refs(data)
        if not refs:
            return data
        found: dict[str, Any] = {}
        missing = []
        for ref in refs:
            held = payloads.local(ref)
            if held is not None:
                found[ref] = payloads.jsonb_form(payloads.decode(held.blob))
            else:
                missing.append(ref)
        if missing:
            rows = conn.execute(q("read_payloads"), {"hashes": [_digest(r) for r in missing]}).fetchall()
            for digest, blob, _encoding in rows:
                found[ref_of_digest(bytes(digest))] = payloads.jsonb_form(payloads.decode(bytes(blob)))
        if not found.keys() >= refs:
            raise DatabaseError(f"stored payload(s) {', '.join(sorted(refs - found.keys()))} are missing")
        data = payloads.replace_refs(data, found)
    return data


# ---------------------------------------------------------------- sweeping

SWEEP_GRACE = timedelta(hours=1)  # a payload stored more recently is never swept, linked or not
SWEEP_SCAN = 5_000  # payloads looked at per statement (a transaction of its own: short locks)


@dataclass(frozen=True, slots=True)
class PayloadSweep:
    """What a sweep removed (or, a dry run, would remove): payloads no run links, stored
    before ``cutoff``, and their bytes as stored."""

    payloads: int
    stored_bytes: int
    cutoff: datetime

    def to_json(self) -> dict[str, Any]:
        return {"payloads": self.payloads, "stored_bytes": self.stored_bytes, "cutoff": self.cutoff.isoformat()}
