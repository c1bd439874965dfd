"""A run's timeline, rebuilt from its history: what the web view draws.

Bars are things that take time: activities (from ``ActivityScheduled`` to their outcome,
with the attempt count the outcome records), saga compensations, LLM calls (activities
whose result is a ``cairn.llm.completion``), timers and child workflows. Marks are
instants: signals, saga progress, cancel requests, the run's start and close, and ``now``
while the run is open. A bar with no outcome yet is open and ends at ``now``, except a
waiting timer, which ends where it will fire (the timeline reaches that far).

Pure functions over :class:`~cairn.engine.history.Event` lists, so they are tested
without a server or a browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.views import llm_summary, summarize

__all__ = ["Bar", "Mark", "Timeline", "build_timeline"]

LLM_RESULT_TYPE = "cairn.llm.completion"


@dataclass
class Bar:
    """Something that took (or is taking) time.

    Attributes:
        kind: ``activity``, ``compensation``, ``llm``, ``timer`` or ``child``.
        seq: the seq of the event that started it (its id in history).
        name: activity type, child workflow type, or ``timer``.
        status: ``completed``, ``failed``, ``cancelled``, ``running`` (activities,
            children), ``fired``, ``cancelled``, ``waiting`` (timers).
        attempts: activity attempts so far (the outcome's, or the pending task's).
        detail: one line (the result, the failure, the LLM usage, the fire time).
        saga: the saga id of a saga step or compensation.
    """

    kind: str
    seq: int
    name: str
    start: datetime
    end: datetime | None
    status: str
    attempts: int | None = None
    detail: str = ""
    saga: int | None = None
    llm: dict[str, Any] | None = None

    @property
    def retries(self) -> int:
        return max((self.attempts or 1) - 1, 0)


@dataclass
class Mark:
    """An instant: ``start``, ``close``, ``signal``, ``saga``, ``cancel``, ``marker``,
    ``now`` (an open run's present, seq 0)."""

    kind: str
    seq: int
    at: datetime
    label: str


@dataclass
class Timeline:
    """Bars and marks of one run, between ``start`` and ``end``."""

    start: datetime
    end: datetime
    bars: list[Bar] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0)

    def offset(self, at: datetime) -> float:
        """Where ``at`` lies, in percent of the timeline's width (0-100)."""
        span = self.seconds
        if span <= 0:
            return 0.0
        return min(max((at - self.start).total_seconds() / span * 100.0, 0.0), 100.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(), "end": self.end.isoformat(),
            "bars": [{**b.__dict__, "start": b.start.isoformat(),
                      "end": b.end.isoformat() if b.end else None} for b in self.bars],
            "marks": [{**m.__dict__, "at": m.at.isoformat()} for m in self.marks],
        }


def _short(value: Any, limit: int = 80) -> str:
    import json

    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _failure_line(failure: dict[str, Any] | None) -> str:
    f = failure or {}
    return f"{f.get('type')}: {f.get('message')}"


def build_timeline(events: list[Event], now: datetime,
                   pending_activities: list[dict[str, Any]] | None = None) -> Timeline:
    """The timeline of a run from its history.

    Args:
        events: the run's history, in seq order (each with its ``at``).
        now: the database's time: where open bars end.
        pending_activities: ``describe().pending_activities`` (their attempt counts and
            last failures, which history does not hold until the outcome).
    """
    timed = [e for e in events if e.at is not None]
    start = timed[0].at if timed else now
    assert start is not None
    pending = {a["seq"]: a for a in pending_activities or []}
    bars: dict[int, Bar] = {}
    marks: list[Mark] = []
    closed_at: datetime | None = None
    for e in timed:
        at = e.at
        assert at is not None
        d = e.data
        if e.type == h.WORKFLOW_STARTED:
            marks.append(Mark("start", e.seq, at, f"started {d.get('workflow_type')}"))
        elif e.type == h.ACTIVITY_SCHEDULED:
            kind = "compensation" if "compensation" in d else "activity"
            name = str(d.get("activity_type"))
            bar = Bar(kind, e.seq, name, at, None, "running", saga=d.get("saga"))
            p = pending.get(e.seq)
            if p is not None:
                bar.attempts = p.get("attempt")
                last = p.get("last_failure")
                bar.status = "running" if p.get("lease_owner") else ("retrying" if last else "scheduled")
                bar.detail = f"last failure {_failure_line(last)}" if last else ""
            bars[e.seq] = bar
        elif e.type in (h.ACTIVITY_COMPLETED, h.ACTIVITY_FAILED, h.ACTIVITY_CANCELLED):
            bar_or_none = bars.get(d.get("activity_seq"))  # type: ignore[arg-type]
            if bar_or_none is None:
                continue
            bar = bar_or_none
            bar.end = at
            if e.type == h.ACTIVITY_COMPLETED:
                bar.status, bar.attempts = "completed", d.get("attempt")
                result = d.get("result")
                if isinstance(result, dict) and result.get("type") == LLM_RESULT_TYPE:
                    bar.kind = "llm" if bar.kind == "activity" else bar.kind
                    bar.llm = result
                    bar.detail = llm_summary(result)
                else:
                    bar.detail = f"-> {_short(result)}"
            elif e.type == h.ACTIVITY_FAILED:
                bar.status, bar.attempts = "failed", d.get("attempts")
                bar.detail = _failure_line(d.get("failure"))
            else:
                bar.status = "cancelled"
                bar.detail = "cancelled" + ("" if d.get("started") else " before it started")
        elif e.type == h.TIMER_STARTED:
            # A waiting timer's bar ends at its fire time (replaced by the actual one on firing).
            bars[e.seq] = Bar("timer", e.seq, "timer", at, _instant(d.get("fire_at")), "waiting",
                              detail=f"{d.get('duration')} s, fires {d.get('fire_at')}")
        elif e.type in (h.TIMER_FIRED, h.TIMER_CANCELLED):
            timer = bars.get(d.get("timer_seq"))  # type: ignore[arg-type]
            if timer is not None and timer.kind == "timer":
                timer.end = at
                timer.status = "fired" if e.type == h.TIMER_FIRED else "cancelled"
        elif e.type == h.CHILD_WORKFLOW_SCHEDULED:
            bars[e.seq] = Bar("child", e.seq, str(d.get("workflow_type")), at, None, "running",
                              detail=f"as {d.get('workflow_id')}")
        elif e.type in h.CHILD_EVENTS:
            child = bars.get(d.get("child_seq"))  # type: ignore[arg-type]
            if child is None or child.kind != "child":
                continue
            if e.type == h.CHILD_WORKFLOW_STARTED:
                child.detail = f"as {d.get('workflow_id')} (run {d.get('run_id')})"
                continue
            child.end = at
            if e.type == h.CHILD_WORKFLOW_COMPLETED:
                child.status, child.detail = "completed", f"{d.get('workflow_id')} -> {_short(d.get('result'))}"
            else:
                child.status, child.detail = "failed", f"{d.get('workflow_id')}: {_failure_line(d.get('failure'))}"
        elif e.type == h.SIGNAL_RECEIVED:
            marks.append(Mark("signal", e.seq, at, f"signal {d.get('name')} {_short(d.get('payload'), 60)}"))
        elif e.type == h.CANCEL_REQUESTED:
            marks.append(Mark("cancel", e.seq, at, f"cancel requested {d.get('reason') or ''}".rstrip()))
        elif e.type == h.MARKER_RECORDED and d.get("kind") == "saga":
            marks.append(Mark("saga", e.seq, at, summarize(e)))
        elif e.type == h.MARKER_RECORDED:
            marks.append(Mark("marker", e.seq, at, summarize(e)))
        elif e.type in h.TERMINAL_EVENTS:
            closed_at = at
            marks.append(Mark("close", e.seq, at, f"{h.TERMINAL_EVENTS[e.type]}: {summarize(e)}"))
    end = closed_at or max(now, start)
    ordered = sorted(bars.values(), key=lambda b: b.seq)
    ends = [b.end for b in ordered if b.end is not None]
    end = max([end, *ends])
    if closed_at is None and end > now:  # a timer fires later: show where the present is
        marks.append(Mark("now", 0, max(now, start), "now"))
    return Timeline(start=start, end=end, bars=ordered, marks=marks)


def _instant(value: Any) -> datetime | None:
    """A recorded ISO-8601 time (``fire_at``), or None if absent or unreadable."""
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
