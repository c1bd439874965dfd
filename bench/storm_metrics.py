"""The LLM storm workload's figures, from the storm provider's request log and the runner's
output (bench/README.md, "Workload LLM", says how each is counted).

Pure functions of their inputs; bench/run.py calls :func:`figures` once per run.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import storm_bound


def read_log(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line))
    return out


def half_open_periods(events: list[list[Any]]) -> list[tuple[float, float | None]]:
    """[start, end) of each half-open period from breaker transitions ``[from, to, at, reason]``
    (end None: still half-open when the run ended)."""
    periods: list[tuple[float, float | None]] = []
    start: float | None = None
    for from_state, to_state, at, *_ in events:
        if start is not None and from_state == "half_open":
            periods.append((start, float(at)))
            start = None
        if to_state == "half_open":
            start = float(at)
    if start is not None:
        periods.append((start, None))
    return periods


def figures(system: str, requests: list[dict[str, Any]], out: dict[str, Any], provider: dict[str, Any]
            ) -> dict[str, Any]:
    """Every figure of one run. ``provider``: the storm provider's settings (rpm, window,
    fail_rate, burst_every, burst_seconds)."""
    extra = out.get("extra") or {}
    size, calls = int(extra.get("size") or 0), int(extra.get("calls") or 3)
    deadline_s = float(extra.get("deadline_s") or 0)
    start = float(extra.get("window_start") or 0)
    completed = extra.get("completed") or {}
    on_time = sum(1 for at in completed.values() if at is not None and at - start <= deadline_s)
    all_done = len(completed) >= size > 0
    rpm, window = int(provider["rpm"]), float(provider["window"])
    fail_rate = float(provider["fail_rate"])
    total_calls = size * calls
    ideal = total_calls / rpm * window
    floor = total_calls / (1 - fail_rate) / rpm * window if fail_rate < 1 else None

    why = collections.Counter(r["why"] for r in requests)
    oks = collections.Counter(r["key"] for r in requests if r["status"] == 200)
    fails = collections.Counter(r["key"] for r in requests if r["status"] == 500)
    throttled = collections.Counter(r["key"] for r in requests if r["status"] == 429)
    paid_twice = sum(1 for n in oks.values() if n > 1)

    burnt_note = ""
    attempts = extra.get("attempts")
    anomalies = 0
    lost: int | None = None
    if attempts is not None:
        # cairn: a 429 reschedules without counting an attempt, so an attempt beyond the
        # first that no 500 explains was burnt by a 429 (or lost some other way).
        # An unexplained attempt of a call that got no 429 was lost another way (e.g. its
        # lease expired): counted apart, as llm_attempts_lost_other.
        burnt = lost = 0
        for key, attempt in attempts.items():
            unexplained = int(attempt) - 1 - fails[key]
            if unexplained < 0:
                anomalies += 1
            unexplained = max(unexplained, 0)
            burnt += min(unexplained, throttled[key])
            lost += unexplained - min(unexplained, throttled[key])
        burnt_note = ("completed calls' attempt - 1 - their 500s (history), up to the 429s the call got; "
                      "the rest is llm_attempts_lost_other")
    elif extra.get("attempts_burnt_429") is not None:
        burnt = int(extra["attempts_burnt_429"])
        burnt_note = "counted by the runner: 429s its retry machinery counted as a retry"
    else:
        # one request per attempt: every 429 answered is one attempt of the peer's retry count
        burnt = sum(throttled.values())
        burnt_note = "429 answers (one request per attempt, each counted by its retry machinery)"

    first = min((r["t"] for r in requests), default=None)
    last_ok = max((r["end"] for r in requests if r["status"] == 200), default=None)
    fig: dict[str, Any] = {
        "llm_workflows": size, "llm_calls": total_calls, "llm_deadline_s": deadline_s,
        "llm_completed_by_deadline": on_time,
        "llm_completed_pct": 100.0 * on_time / size if size else 0.0,
        "llm_requests": len(requests), "llm_ok": why["ok"], "llm_500": why["fail"],
        "llm_429_burst": why["burst"], "llm_429_rpm": why["rpm"],
        "llm_calls_answered_ok": len(oks), "llm_paid_twice": paid_twice,
        "llm_attempts_burnt_429": burnt, "llm_above_rpm": why["rpm"], "llm_during_burst": why["burst"],
        "llm_makespan_s": float(out["seconds"]) if all_done and out.get("seconds") else None,
        "llm_ideal_s": ideal, "llm_floor_s": floor,
        "llm_provider_span_s": (last_ok - first) if first is not None and last_ok is not None else None,
        "llm_attempt_anomalies": anomalies, "llm_attempts_lost_other": lost,
    }
    fig["llm_makespan_vs_ideal"] = fig["llm_makespan_s"] / ideal if fig["llm_makespan_s"] else None
    fig["llm_makespan_vs_floor"] = fig["llm_makespan_s"] / floor if fig["llm_makespan_s"] and floor else None
    # The idealised client's makespan with the same retry backoff (bench/storm_bound.py).
    fig["llm_bound_s"] = storm_bound.bound(workflows=size, calls=calls, provider=provider)["median"] if size else None
    fig["llm_makespan_vs_bound"] = (fig["llm_makespan_s"] / fig["llm_bound_s"]
                                    if fig["llm_makespan_s"] and fig["llm_bound_s"] else None)
    fig["llm_attempts_burnt_how"] = burnt_note

    events = extra.get("breaker_events")
    permitted = extra.get("permitted_calls_in_half_open")
    if events is not None:
        periods = half_open_periods(events)
        counts = []
        times = sorted(r["t"] for r in requests)
        import bisect

        for s, e in periods:
            lo = bisect.bisect_left(times, s)
            hi = bisect.bisect_left(times, e) if e is not None else len(times)
            counts.append(hi - lo)
        fig["llm_half_open_periods"] = len(periods)
        fig["llm_half_open_max_requests"] = max(counts) if counts else 0
        fig["llm_permitted_in_half_open"] = permitted
        if permitted:
            fig["llm_half_open_overrun_periods"] = sum(1 for c in counts if c > permitted)
            fig["llm_half_open_overrun_requests"] = sum(max(c - permitted, 0) for c in counts)
        fig["llm_breaker_opens"] = sum(1 for ev in events if ev[1] == "open")
    return fig
