"""Following a run live: its new history events and the tokens its LLM calls stream.

Used by ``WorkflowHandle.stream()`` (tokens only) and ``cairn history --follow`` (events
and tokens). Woken by the ``cairn_llm_stream`` and ``cairn_closed`` NOTIFYs, with a short
poll as the fallback. Streamed batches live in ``cairn.llm_stream`` until the run closes;
whatever a follower had not seen by then is completed from the recorded result, so the
text it yields for an attempt is always that attempt's whole answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg
from psycopg.rows import dict_row

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.store.sql import q

if TYPE_CHECKING:
    from cairn.client import WorkflowHandle

__all__ = ["StreamChunk", "follow", "llm_summary", "llm_totals"]

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


def _llm_result(event: Event) -> dict[str, Any] | None:
    if event.type != h.ACTIVITY_COMPLETED:
        return None
    result = event.data.get("result")
    if isinstance(result, dict) and result.get("type") == "cairn.llm.completion":
        return result
    return None


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
    run = await handle._resolve()
    run_id = str(run["run_id"])
    client = handle.client
    last_seq, last_chunk = 0, 0
    seen = _Seen()
    async with await psycopg.AsyncConnection.connect(client.url, autocommit=True) as listener:
        await listener.execute("LISTEN cairn_llm_stream")
        await listener.execute("LISTEN cairn_closed")
        while True:
            async with client.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                # The status first: if it is closed now, the events read after it are all there are.
                status = await (await cur.execute(q("llm_follow_status"), {"run_id": run_id})).fetchone()
                chunks = await (await cur.execute(q("llm_stream_after"), {
                    "run_id": run_id, "after": last_chunk, "seq": activity_seq})).fetchall()
                new = await (await conn.execute(q("read_history_after"), {"run_id": run_id, "after": last_seq}
                                                )).fetchall()
            for c in chunks:
                last_chunk = c["id"]
                for out in seen.chunk(c["activity_seq"], c["attempt"], c["text"]):
                    yield out
            done = status is None or status["status"] != "running"
            for s, t, d, a in new:
                event = Event(s, t, d, a)
                last_seq = event.seq
                if events:
                    yield event
                seq = event.data.get("activity_seq")
                result = _llm_result(event)
                if result is not None and isinstance(seq, int) and (activity_seq is None or seq == activity_seq):
                    for out in seen.completed(seq, result):
                        yield out
                if activity_seq is not None and seq == activity_seq and event.type in (
                        h.ACTIVITY_COMPLETED, h.ACTIVITY_FAILED, h.ACTIVITY_CANCELLED):
                    done = True
            if done:
                return
            with contextlib.suppress(TimeoutError):
                async for _ in listener.notifies(timeout=poll, stop_after=1):
                    pass


# ---------------------------------------------------------------- recorded calls


def llm_summary(result: dict[str, Any]) -> str:
    """One line for a recorded LLM completion: model, tokens, cost, time to first token."""
    usage = result.get("usage") or {}
    parts = [f"llm {result.get('provider')}/{result.get('model')}"]
    if result.get("requested_model") and result.get("requested_model") != result.get("model"):
        parts.append(f"(asked {result['requested_model']})")
    if usage:
        parts.append(f"{usage.get('input_tokens')} in ({usage.get('cached_input_tokens', 0)} cached) / "
                     f"{usage.get('output_tokens')} out")
        cost = usage.get("cost_usd")
        parts.append(f"${cost:.6f}" if isinstance(cost, int | float) else "cost unknown")
    else:
        parts.append("usage unknown")
    if isinstance(result.get("ttft_seconds"), int | float):
        parts.append(f"ttft {result['ttft_seconds']:.3f} s")
    return " ".join(parts)


def llm_calls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The LLM calls of a run, from its recorded completions (``llm_completions`` rows)."""
    out = []
    for r in rows:
        res = (r["data"] or {}).get("result") or {}
        usage = res.get("usage") or {}
        out.append({"seq": r["data"].get("activity_seq"), "model": res.get("model"),
                    "requested_model": res.get("requested_model"), "provider": res.get("provider"),
                    "request_id": res.get("request_id"), "attempt": res.get("attempt"),
                    "input_tokens": usage.get("input_tokens"), "cached_input_tokens": usage.get("cached_input_tokens"),
                    "output_tokens": usage.get("output_tokens"), "cost_usd": usage.get("cost_usd"),
                    "ttft_seconds": res.get("ttft_seconds"), "duration_seconds": res.get("duration_seconds"),
                    "skipped": res.get("skipped") or []})
    return out


def llm_totals(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens and cost over a run's LLM calls (cost ``None`` if any call's is unknown)."""
    costs = [c["cost_usd"] for c in calls]
    return {"calls": len(calls),
            "input_tokens": sum(c["input_tokens"] or 0 for c in calls),
            "cached_input_tokens": sum(c["cached_input_tokens"] or 0 for c in calls),
            "output_tokens": sum(c["output_tokens"] or 0 for c in calls),
            "cost_usd": None if any(x is None for x in costs) else round(sum(costs), 9)}
