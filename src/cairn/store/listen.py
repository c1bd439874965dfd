"""A session that LISTENs: the client's close listener and ``follow`` hear NOTIFYs on it
(``cairn_closed``, ``cairn_query_answered``, ``cairn_llm_stream``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from cairn.store import db


class Listener:
    """One dedicated autocommit session listening to some channels (see :func:`listening`)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def notes(self) -> AsyncIterator[str]:
        """The payloads of the NOTIFYs as they arrive, for as long as the session lasts
        (a lost session raises a Cairn error)."""
        try:
            async for note in self._conn.notifies():
                yield note.payload
        except psycopg.Error as exc:
            raise db.translate(exc) from None

    async def wait(self, timeout: float) -> None:
        """Waits for one NOTIFY, for up to ``timeout`` seconds."""
        try:
            with contextlib.suppress(TimeoutError):
                async for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                    pass
        except psycopg.Error as exc:
            raise db.translate(exc) from None


@contextlib.asynccontextmanager
async def listening(url: str, *channels: str) -> AsyncIterator[Listener]:
    """A new session (not from a pool: it stays on its channels) that listens to
    ``channels``; connection errors translated, the password masked."""
    conn = await db.connect_async(url)
    try:
        async with conn:
            for channel in channels:
                await conn.execute(f"LISTEN {channel}".encode())  # channel names are Cairn's own constants
            yield Listener(conn)
    except psycopg.Error as exc:
        raise db.translate(exc) from None
