"""Following a run live: its new history events and the tokens its LLM calls stream.

Used by ``WorkflowHandle.stream()`` (tokens only) and ``cairn history --follow`` (events
and tokens). Woken by the ``cairn_llm_stream`` and ``cairn_closed`` NOTIFYs, with a short
poll as the fallback. Streamed batches live in ``cairn.llm_stream`` until the run closes;
whatever a follower had not seen by then is completed from the recorded result, so the
text it yields for an attempt is always that attempt's whole answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NamedTuple

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.store import runs
from cairn.store.listen import listening
from cairn.views import llm_result

if TYPE_CHECKING:
    from cairn.client.handle import WorkflowHandle

__all__ = ["StreamChunk", "follow"]

FOLLOW_POLL_SECONDS = 0.25  # the fallback poll when no NOTIFY comes


class StreamChunk(NamedTuple):
    """Streamed text of one attempt of an LLM activity.

    ``restart`` marks the first chunk of a retried attempt (``text`` empty): the text
    before it belonged to an attempt that failed, and this attempt starts over.
    """

    attempt: int
    text: str
    activity_seq: int
    restart: bool = False


class _Seen:
    """Per LLM activity: the attempt being streamed and its text so far."""

    def __init__(self) -> None:
        self.attempt: dict[int, int] = {}
        self.text: dict[int, str] = {}

    def chunk(self, seq: int, attempt: int, text: str) -> list[StreamChunk]:
        out: list[StreamChunk] = []
        current = self.attempt.get(seq)
        if current is not None and attempt < current:
            return out  # a late batch of an attempt that was already superseded
        if current is not None and attempt > current:
            out.append(StreamChunk(attempt, "", seq, restart=True))
            self.text[seq] = ""
        self.attempt[seq] = attempt
        self.text[seq] = self.text.get(seq, "") + text
        out.append(StreamChunk(attempt, text, seq))
        return out

    def completed(self, seq: int, result: dict[str, Any]) -> list[StreamChunk]:
        """The part of a recorded completion this follower has not seen streamed."""
        attempt, text = int(result.get("attempt") or 1), str(result.get("text") or "")
        seen = self.text.get(seq, "")
        if self.attempt.get(seq) == attempt and text.startswith(seen):
            rest = text[len(seen):]
            return [StreamChunk(attempt, rest, seq)] if rest else []
        out = self.chunk(seq, attempt, "") if seq in self.attempt else []
        out = [c for c in out if c.restart]
        self.attempt[seq], self.text[seq] = attempt, text
        return [*out, StreamChunk(attempt, text, seq)] if text else out


async def follow(handle: WorkflowHandle, *, activity_seq: int | None = None, events: bool = True,
                 poll: float = FOLLOW_POLL_SECONDS) -> AsyncIterator[Event | StreamChunk]:
    """Yields the run's history events (if ``events``) and its LLM stream chunks as they
    arrive, until the run closes (or, with ``activity_seq``, until that activity's outcome
    is recorded)."""
    run_id = (await handle._resolve()).run_id
    client = handle.client
    last_seq, last_chunk = 0, 0
    seen = _Seen()
    async with listening(client.url, "cairn_llm_stream", "cairn_closed") as listener:
        while True:
            async with client.pool.connection() as conn:
                status, chunks, new = await runs.follow_step(conn, run_id, after_chunk=last_chunk, after_seq=last_seq,
                                                             activity_seq=activity_seq)
            for c in chunks:
                last_chunk = c.id
                for out in seen.chunk(c.activity_seq, c.attempt, c.text):
                    yield out
            done = status is None or status != "running"
            for event in new:
                last_seq = event.seq
                if events:
                    yield event
                seq = event.data.get("activity_seq")
                result = llm_result(event)
                if result is not None and isinstance(seq, int) and (activity_seq is None or seq == activity_seq):
                    for out in seen.completed(seq, result):
                        yield out
                if activity_seq is not None and seq == activity_seq and event.type in (
                        h.ACTIVITY_COMPLETED, h.ACTIVITY_FAILED, h.ACTIVITY_CANCELLED):
                    done = True
            if done:
                return
            await listener.wait(poll)
