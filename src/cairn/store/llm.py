"""The statements of the built-in chat activity (``cairn.llm.chat``): its streamed text.

Every function takes a connection checked out of a store pool and raises Cairn errors,
not psycopg's.
"""

from __future__ import annotations

from cairn.store.db import Conn, translated
from cairn.store.sql import q


@translated
async def append_stream(conn: Conn, run_id: str, seq: int, attempt: int, chunk: int, text: str) -> None:
    """One batch of an attempt's streamed text (a batch already written is left alone), and
    a NOTIFY that wakes the run's followers."""
    await conn.execute(q("llm_stream_append"), {"run_id": run_id, "seq": seq, "attempt": attempt, "chunk": chunk,
                                                "text": text})
