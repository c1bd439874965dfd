"""Per-key concurrency limits (``cairn.concurrency_limits``, migration 0023): a key's limit
set, listed, removed. Slots are taken and given back by the database itself (the start
and record statements, and triggers; see the migration), never here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cairn.store import db
from cairn.store.sql import q

__all__ = ["ConcurrencyLimit", "delete_limit", "list_limits", "set_limit"]


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    """A key's limit (None: none, it only counts) and use, for runs (``kind="workflow"``)
    or activity attempts (``kind="activity"``): slots taken, and runs or activities waiting."""

    kind: str
    key: str
    max_running: int | None
    in_use: int
    waiting: int
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "max_running": self.max_running, "in_use": self.in_use,
                "waiting": self.waiting, "updated_at": self.updated_at}


async def set_limit(conn: db.Conn, namespace: str, kind: str, key: str, max_running: int | None) -> int:
    """Sets the key's limit; returns how many waiting runs or activities it let go."""
    r = await (await conn.execute(q("set_concurrency_limit"), {
        "namespace": namespace, "kind": kind, "key": key, "max_running": max_running})).fetchone()
    assert r is not None
    return int(r[0])


async def list_limits(conn: db.Conn, namespace: str, key: str | None = None) -> list[ConcurrencyLimit]:
    """The namespace's keys (or one key), by key and kind."""
    rows = await (await conn.execute(q("list_concurrency_limits"), {"namespace": namespace, "key": key})).fetchall()
    return [ConcurrencyLimit(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5]) for r in rows]


async def delete_limit(conn: db.Conn, namespace: str, kind: str, key: str) -> int:
    """Removes the key's limit (its waiting work goes; the row too once no slot is held),
    in one transaction; returns how many waiting runs or activities it let go."""
    params = {"namespace": namespace, "kind": kind, "key": key}
    async with conn.transaction():
        released = await set_limit(conn, namespace, kind, key, None)
        await conn.execute(q("delete_concurrency_limit"), params)
    return released
