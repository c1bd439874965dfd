"""The web view's timeline model, from recorded histories (no server, no browser)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from cairn.engine.history import Event
from cairn.ui.pages import run_url
from cairn.ui.timeline import build_timeline

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


def load(name: str) -> list[Event]:
    return [Event.from_json(e) for e in json.loads((HISTORIES / f"{name}.json").read_text())["events"]]


def test_saga_timeline_has_steps_and_compensations():
    events = load("saga_compensated")
    tl = build_timeline(events, events[-1].at + timedelta(hours=1))
    assert [(b.kind, b.seq, b.status) for b in tl.bars] == [
        ("activity", 4, "completed"), ("activity", 7, "completed"), ("activity", 10, "failed"),
        ("compensation", 14, "completed"), ("compensation", 17, "completed"), ("compensation", 20, "completed")]
    assert all(b.saga == 3 for b in tl.bars)
    assert [m.kind for m in tl.marks] == ["start", "saga", "saga", "saga", "close"]
    assert tl.end == events[-1].at  # closed: the timeline ends at the close, not at now
    assert tl.offset(events[0].at) == 0.0
    assert tl.offset(events[-1].at) == 100.0


def test_retried_activity_and_timers():
    retried = load("retry_failed_caught")
    [bar] = build_timeline(retried, retried[-1].at).bars
    assert (bar.status, bar.attempts, bar.retries) == ("failed", 3, 2)
    assert bar.detail.startswith("Boom: ")

    pipeline = load("pipeline_completed")
    timers = [b for b in build_timeline(pipeline, pipeline[-1].at).bars if b.kind == "timer"]
    assert [(b.seq, b.status) for b in timers] == [(8, "fired"), (11, "cancelled")]


def test_open_bars_end_at_now():
    events = load("pipeline_completed")[:8]  # up to the first timer, still waiting
    now = events[-1].at + timedelta(seconds=5)
    tl = build_timeline(events, now)
    timer = tl.bars[-1]
    assert (timer.kind, timer.status, timer.end) == ("timer", "waiting", None)
    assert tl.end == now


def test_run_url_encodes_the_whole_id():
    assert run_url("a/b <c>", "r1") == "/runs/a%2Fb%20%3Cc%3E?run_id=r1"
