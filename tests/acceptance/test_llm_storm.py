"""Issue 14: LLM activities hold under a provider storm.

A new user's setup: three ``cairn worker`` PROCESSES at their default settings (no worker,
breaker, retry or throttle options; ``-v`` only makes them log at info), about a hundred
workflows of two or three ``cairn.llm.chat`` calls in a row, against Cairn's fake provider
in storm mode: 30 % of requests answered 500, and a 429 burst (Retry-After to its end)
every few seconds. Asserted from the fake's request log, the database and the workers'
logs, never from absolute times (the only bound is a generous wait for completion):

- every workflow completes;
- no call is answered 200 more than once (a call is paid once), by the call key each
  request carries;
- no half-open period lets more requests reach the provider than the breaker's
  ``permitted_calls_in_half_open`` (periods from ``cairn.breaker_events``);
- no worker logs a ``PoolTimeout``.

Violations that cannot heal (a failed run, a call paid twice, a probe overrun, a pool
timeout) fail the test as soon as they are seen, with the figures.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import llm_flows as lf
import pytest
from acceptance_support import WorkerProc, query, start_runs

from cairn.breakers import BreakerConfig

pytestmark = pytest.mark.acceptance

WORKFLOWS = 100
WORKERS = 3
# 30 % failures; a 2 s burst of 429s every 8 s, the first 3 s in, so a run of any length
# meets several bursts. The seed fixes which requests of which call fail (by call key, not
# by arrival order): with seed 2, 112 of the requests that pass the bursts fail (31 %) and
# the longest streak of one call is 4 failures, i.e. 1 + 2 + 4 + 8 s of the default retry
# backoff; the unluckiest workflow waits 16 s in backoff (seed 1's waits 31 s). That tail,
# not the engine, is most of the test's time.
STORM = {"failure_rate": 0.3, "burst_every": 8.0, "burst_seconds": 2.0, "burst_first": 3.0, "seed": 2}
DEFAULT_PERMITTED = BreakerConfig().permitted_calls_in_half_open  # none is configured: the default
COMPLETION_WAIT_SECONDS = 180.0  # generous: fails with the figures if the runs are not done by then
CHECK_EVERY_SECONDS = 1.0


def providers_file(tmp_path: Path, url: str) -> str:
    """A provider with nothing tuned: no breaker, no rpm, no concurrency cap."""
    path = tmp_path / "providers.json"
    path.write_text(json.dumps({"providers": [{"name": "fake", "base_url": url, "models": [lf.MODEL]}]}))
    return str(path)


def half_open_periods(db_url: str, name: str) -> list[tuple[float, float]]:
    """``(start, end)`` of every half-open period: from entering half-open to the next
    transition of that breaker (or now)."""
    events: list[tuple[str, datetime]] = query(
        db_url, "SELECT to_state, at FROM cairn.breaker_events WHERE name = %s ORDER BY id", (name,))
    periods = []
    for i, (to_state, at) in enumerate(events):
        if to_state == "half_open":
            end = events[i + 1][1].timestamp() if i + 1 < len(events) else time.time()
            periods.append((at.timestamp(), end))
    return periods


class Figures:
    """What the storm did so far, from the fake's log, the database and the workers' logs."""

    def __init__(self, db_url: str, log: list[dict[str, Any]], procs: tuple[WorkerProc, ...], breaker: str,
                 elapsed: float) -> None:
        self.elapsed = elapsed
        self.statuses = Counter(s for (s,) in query(db_url, "SELECT status FROM cairn.runs"))
        self.why = Counter(r["why"] for r in log)
        self.calls = len({r["call"] for r in log})
        paid = Counter(r["call"] for r in log if r["status"] == 200)
        self.paid_twice = sorted(k for k, n in paid.items() if n > 1)
        stored = query(db_url, "SELECT config->>'permitted_calls_in_half_open' FROM cairn.breakers WHERE name = %s",
                       (breaker,))
        self.permitted = int(stored[0][0]) if stored and stored[0][0] else DEFAULT_PERMITTED  # the row's config
        self.periods = half_open_periods(db_url, breaker)
        arrivals = [r["time"] for r in log]
        self.probes = [sum(1 for t in arrivals if a <= t < b) for a, b in self.periods]
        self.transitions = Counter(f"{f}->{t}" for f, t in query(
            db_url, "SELECT from_state, to_state FROM cairn.breaker_events WHERE name = %s", (breaker,)))
        logs = {p.name: p.log() for p in procs}
        self.pool_timeouts = {n: text.count("PoolTimeout") for n, text in logs.items() if "PoolTimeout" in text}
        self.superseded = sum(text.count("was superseded") for text in logs.values())
        self.exited = {p.name: p.proc.returncode for p in procs if p.proc.poll() is not None}
        self.logs = logs

    @property
    def overruns(self) -> list[int]:
        return [n for n in self.probes if n > self.permitted]

    def broken(self) -> list[str]:
        """Violations no more waiting can heal."""
        found = []
        if self.statuses.get("failed") or self.statuses.get("terminated"):
            found.append(f"runs closed without completing: {dict(self.statuses)}")
        if self.paid_twice:
            found.append(f"{len(self.paid_twice)} calls answered 200 more than once: {self.paid_twice[:10]}")
        if self.overruns:
            found.append(f"half-open periods let more than {self.permitted} requests reach the provider: "
                         f"{self.overruns} (requests per period: {self.probes})")
        if self.pool_timeouts:
            found.append(f"workers logged PoolTimeout: {self.pool_timeouts}")
        if self.exited:
            found.append(f"workers exited: {self.exited}")
        return found

    def summary(self) -> str:
        tails = "\n".join(f"--- {n} (last lines but httpx's):\n" + "\n".join(
            [line for line in text.splitlines() if " httpx: " not in line][-12:]) for n, text in self.logs.items())
        return (f"after {self.elapsed:.0f} s: runs {dict(self.statuses)} of {WORKFLOWS}; "
                f"{sum(self.why.values())} requests for {self.calls} calls, by why {dict(self.why)}; "
                f"{len(self.paid_twice)} calls paid twice; breaker transitions {dict(self.transitions)}; "
                f"requests per half-open period {self.probes}; superseded results {self.superseded}; "
                f"PoolTimeout {self.pool_timeouts}\n{tails}")


@pytest.mark.timeout(COMPLETION_WAIT_SECONDS + 60)
def test_llm_calls_hold_under_a_provider_storm(workers, db_url, fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", providers_file(tmp_path, fake_llm.url))
    procs = tuple(workers(f"storm{i}", "-m", "llm_flows", defaults=True, verbose=1) for i in range(WORKERS))
    breaker = f"fake:{lf.MODEL}:{fake_llm.url}"
    fake_llm.storm(**STORM)
    began = time.monotonic()
    start_runs(db_url, lf.storm_chain, [(f"storm-{i}", i) for i in range(WORKFLOWS)])
    while True:
        time.sleep(CHECK_EVERY_SECONDS)
        figures = Figures(db_url, fake_llm.requests(), procs, breaker, time.monotonic() - began)
        broken = figures.broken()
        assert not broken, "; ".join(broken) + "\n" + figures.summary()
        if figures.statuses.get("completed") == WORKFLOWS:
            break
        if figures.elapsed > COMPLETION_WAIT_SECONDS:
            pytest.fail(f"not every workflow completed\n{figures.summary()}")
    print(figures.summary().split("\n--- ")[0])  # the figures of a passing run, for `pytest -s`
    expected_calls = sum(2 + i % 2 for i in range(WORKFLOWS))
    log = fake_llm.requests()
    assert figures.calls == expected_calls, "every call reached the provider, each with its key"
    assert len({r["call"] for r in log if r["status"] == 200}) == expected_calls, "every call was answered once"
    assert figures.why["burst"] > 0, f"the run met a 429 burst: {figures.summary()}"
    assert figures.why["fail"] > 0, f"the run met 500s: {figures.summary()}"
