"""A namespace's settings (``cairn.namespaces``, migration 0020): its retention and its
archive. No row means the defaults: closed runs kept forever, no archive. Written by
clients (``cairn namespace update``), read by the workers' retention pass
(:mod:`cairn.store.retention`), which never writes them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cairn.store import clock, db
from cairn.store.sql import q

__all__ = ["NamespaceSettings", "describe_retention", "get_settings", "list_settings", "set_settings"]


@dataclass(frozen=True, slots=True)
class NamespaceSettings:
    """A namespace's retention (None: forever) and archive (a ``file://`` URI, or None)."""

    namespace: str
    retention: timedelta | None
    archive_uri: str | None
    updated_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace,
                "retention_seconds": None if self.retention is None else self.retention.total_seconds(),
                "retention": describe_retention(self.retention), "archive_uri": self.archive_uri,
                "updated_at": self.updated_at}


def describe_retention(retention: timedelta | None) -> str:
    """``"30d"``, ``"36h"``, ``"forever"``."""
    if retention is None:
        return "forever"
    seconds = int(retention.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _settings(r: Any) -> NamespaceSettings:
    return NamespaceSettings(str(r[0]), r[1], r[2], r[3])


async def get_settings(conn: db.Conn, namespace: str) -> NamespaceSettings:
    r = await (await conn.execute(q("namespace_settings"), {"namespace": namespace})).fetchone()
    return NamespaceSettings(namespace, None, None, None) if r is None else _settings(r)


async def list_settings(conn: db.Conn) -> list[NamespaceSettings]:
    """Every namespace with settings or runs."""
    return [_settings(r) for r in await (await conn.execute(q("list_namespace_settings"))).fetchall()]


async def set_settings(conn: db.Conn, namespace: str, *, retention: timedelta | None = None,
                       set_retention: bool = False, archive_uri: str | None = None,
                       set_archive: bool = False) -> NamespaceSettings:
    """Sets what ``set_retention`` / ``set_archive`` say (None: forever / no archive)."""
    r = await (await conn.execute(q("set_namespace_settings"), {
        "namespace": namespace, "retention": retention, "archive_uri": archive_uri, "set_retention": set_retention,
        "set_archive": set_archive, "now": clock.now(conn)})).fetchone()
    assert r is not None
    return _settings(r)
