"""The web view's timeline model, from recorded histories (no server, no browser)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from cairn.engine.history import Event
from cairn.ui.pages import CSS, axis_labels, run_url, timeline_html
from cairn.ui.timeline import build_timeline
from support import HISTORIES


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
    events = load("pipeline_completed")[:5]  # two activities scheduled, no outcome yet
    now = events[-1].at + timedelta(seconds=5)
    tl = build_timeline(events, now)
    assert [(b.kind, b.status, b.end) for b in tl.bars] == [("activity", "running", None)] * 2
    assert tl.end == now
    assert [m.kind for m in tl.marks] == ["start"]  # the present is the end: no "now" mark


def test_a_waiting_timer_ends_at_its_fire_time():
    """The defect: a waiting timer's bar ended at now, whatever its fire time."""
    events = load("pipeline_completed")[:8]  # the 0.2 s timer (seq 8) started, not fired
    fire_at = datetime.fromisoformat(events[-1].data["fire_at"])
    now = events[-1].at + timedelta(seconds=0.05)
    tl = build_timeline(events, now)
    timer = tl.bars[-1]
    assert (timer.kind, timer.status, timer.end) == ("timer", "waiting", fire_at)
    assert tl.end == fire_at
    assert [(m.kind, m.at) for m in tl.marks if m.kind == "now"] == [("now", now)]
    (box,) = [b for b in bar_boxes(timeline_html(tl)) if b[0] == "timer"]
    assert box[2] == pytest.approx(tl.offset(fire_at)) == pytest.approx(100.0)
    assert tl.offset(now) < 100.0
    # Past its fire time (the worker is down, say) it ends there; the timeline reaches now.
    late = events[-1].at + timedelta(seconds=5)
    tl = build_timeline(events, late)
    assert (tl.bars[-1].end, tl.end) == (fire_at, late)
    # Once fired, it ends when it fired.
    fired = load("pipeline_completed")[:10]
    assert build_timeline(fired, late).bars[-1].end == fired[-1].at


class _Track(HTMLParser):
    """Each timeline row: its bar's kind and box and its note's box and parent, in
    percent of the track, as the page's CSS lays them out (absolute, in the track)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.rows: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        cls = a.get("class") or ""
        if "bar-row" in cls.split():
            self.rows.append({"kind": a["data-kind"]})
        box = re.fullmatch(r"left:([\d.]+)%;width:([\d.]+)%", a.get("style") or "")
        if box and self.rows:
            start, width = float(box[1]), float(box[2])
            if "bar" in cls.split():
                self.rows[-1]["bar"] = (start, start + width)
            elif "note" in cls.split():
                self.rows[-1]["note"] = (start, start + width)
                self.rows[-1]["note_parent"] = self.stack[-1]
        self.stack.append(cls)

    def handle_endtag(self, tag: str) -> None:
        self.stack.pop()


def track_rows(html: str) -> list[dict[str, Any]]:
    parser = _Track()
    parser.feed(html)
    return parser.rows


def bar_boxes(html: str) -> list[tuple[str, float, float]]:
    return [(r["kind"], *r["bar"]) for r in track_rows(html)]


def _running_run() -> tuple[list[Event], datetime, list[dict[str, Any]]]:
    """Two activities open for 10 s: one running, one waiting for its third attempt."""
    events = load("pipeline_completed")[:5]
    pending = [{"seq": 3, "attempt": 1, "lease_owner": "w1", "last_failure": None},
               {"seq": 4, "attempt": 3, "lease_owner": None,
                "last_failure": {"type": "Flaky", "message": "a rather long failure message " * 4}}]
    return events, events[-1].at + timedelta(seconds=10), pending


@pytest.mark.parametrize("case", ["running", "retrying timer", "closed", "saga"])
def test_notes_stay_in_the_track_clear_of_the_row_labels(case):
    """The defect: a note beside a bar reaching the right edge was drawn to the bar's
    left, over the row labels (running runs, retries, timers)."""
    pending: list[dict[str, Any]] | None = None
    if case == "running":
        events, now, pending = _running_run()
    elif case == "retrying timer":
        events = load("pipeline_completed")[:11]  # the 60 s timer (seq 11) waiting
        now = events[-1].at + timedelta(seconds=1)
    else:
        events = load("pipeline_completed" if case == "closed" else "saga_compensated")
        now = events[-1].at
    tl = build_timeline(events, now, pending)
    rows = track_rows(timeline_html(tl))
    assert len(rows) == len(tl.bars)
    assert ".tl-track { position: relative;" in CSS  # the notes' containing block: the track
    for row in rows:
        start, end = row["note"]
        assert row["note_parent"] == "tl-track", "a note is laid out in the track, not in its bar"
        assert 0.0 <= start <= end <= 100.0, f"the note of a {row['kind']} leaves the track: {row}"
        bar_start, bar_end = row["bar"]
        assert end <= bar_start + 1e-3 or start >= bar_end - 1e-3 or (start, end) == (bar_start, bar_end)


@pytest.mark.parametrize("seconds", [0.0, 0.004, 0.01, 0.349, 1.0, 2.5, 59.0, 3600.0, 1e-7])
def test_axis_labels_are_distinct(seconds):
    """The defect: short runs got `+0.00 s +0.00 s +0.01 s ...`."""
    labels = axis_labels(seconds)
    assert len(set(labels)) == len(labels)
    assert labels[0].startswith("+0")
    assert len(labels) == (1 if seconds == 0 else 5)


def test_a_short_runs_axis_reads_in_ms():
    events = load("pipeline_completed")[:1]
    tl = build_timeline(events, events[0].at + timedelta(milliseconds=10))
    axis = re.search(r'<div class="tl-axis">(.*?)</div>', timeline_html(tl))
    assert axis is not None
    assert re.findall(r"<span>(.*?)</span>", axis[1]) == ["+0 ms", "+2 ms", "+5 ms", "+8 ms", "+10 ms"]


def test_run_url_encodes_the_whole_id():
    assert run_url("a/b <c>", "r1") == "/runs/a%2Fb%20%3Cc%3E?run_id=r1"
