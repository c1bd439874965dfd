"""Breakers and rate limits hold across worker PROCESSES: 4 workers hammer one always-failing
activity behind one breaker (at most permitted_calls_in_half_open calls per half-open
period, cluster-wide), and 2 workers share one rate limit."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import resilience_flows as rf
from acceptance_support import start_runs

from support import query, wait_for

pytestmark = pytest.mark.acceptance


@pytest.fixture
def calls_table(db_url: str) -> str:
    query(db_url, """
        CREATE TABLE public.resilience_calls (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind text NOT NULL, pid int NOT NULL, window_start timestamptz,
            at timestamptz NOT NULL DEFAULT clock_timestamp())""")
    return db_url


def test_half_open_probe_limit_holds_across_four_processes(workers, calls_table):
    db = calls_table
    procs = tuple(workers(f"w{i}", "-m", "resilience_flows", "--activity-concurrency", "20")
                  for i in range(4))
    start_runs(db, rf.hammer, [(f"hammer-{i}", i) for i in range(16)])

    def half_open_periods() -> int:
        return query(db, "SELECT count(*) FROM cairn.breaker_events WHERE name = 'flaky' "
                         "AND to_state = 'half_open'")[0][0]

    wait_for("5 half-open periods", lambda: half_open_periods() >= 5, procs=procs)
    for p in procs:
        p.proc.kill()
        p.proc.wait(timeout=30)

    # Each call is attributed to the half-open period it started in: [one half_open
    # transition, the next). Nothing is admitted while open, so every call between two
    # half-open transitions was a probe of the first.
    starts = [at for (at,) in query(db, "SELECT at FROM cairn.breaker_events WHERE name = 'flaky' "
                                        "AND to_state = 'half_open' ORDER BY id")]
    calls = [at for (at,) in query(db, "SELECT at FROM public.resilience_calls WHERE kind = 'probe' ORDER BY at")]
    per_period = Counter()
    for at in calls:
        if at < starts[0]:
            continue  # closed-state calls before the first opening
        per_period[max(i for i, s in enumerate(starts) if s <= at)] += 1
    assert len(starts) >= 5
    assert max(per_period.values()) == rf.PROBED.permitted_calls_in_half_open, \
        f"the limit was reached (so contended) but never passed: {per_period}"
    assert sum(per_period.values()) >= len(starts) - 1, "probes did run in the half-open periods"
    pids = {pid for (pid,) in query(db, "SELECT DISTINCT pid FROM public.resilience_calls")}
    assert len(pids) >= 2, "more than one process made calls"
    # Many attempts were refused and rescheduled rather than run: the counters say so.
    not_permitted, failed = query(db, "SELECT not_permitted, failed FROM cairn.breakers WHERE name = 'flaky'")[0]
    assert not_permitted > failed
    assert not query(db, "SELECT 1 FROM cairn.history WHERE type = 'ActivityFailed'"), \
        "open-breaker refusals are reschedules, not failures"


def test_rate_limit_holds_across_two_processes(workers, calls_table):
    db = calls_table
    procs = tuple(workers(f"r{i}", "-m", "resilience_flows") for i in range(2))
    n = 14
    start_runs(db, rf.rate_limited, [(f"limited-{i}", i) for i in range(n)])

    def done() -> bool:
        return query(db, "SELECT count(*) FROM cairn.runs WHERE status = 'completed'")[0][0] == n

    wait_for("every rate-limited run to complete", done, timeout=90, procs=procs)
    per_window = Counter(w for (w,) in query(db, "SELECT window_start FROM public.resilience_calls "
                                                 "WHERE kind = 'limited'"))
    assert sum(per_window.values()) == n
    assert max(per_window.values()) <= rf.RATE_LIMIT, per_window
    assert len(per_window) >= n // rf.RATE_LIMIT, "the calls were spread over several windows"
    # The window slides: no span of its length holds more than the limit (by call times).
    ats = [at for (at,) in query(db, "SELECT at FROM public.resilience_calls ORDER BY at")]
    span = timedelta(seconds=rf.RATE_WINDOW_SECONDS)
    assert max(sum(1 for b in ats if a <= b < a + span) for a in ats) <= rf.RATE_LIMIT
    pids = {pid for (pid,) in query(db, "SELECT DISTINCT pid FROM public.resilience_calls")}
    assert len(pids) == 2, "both processes made calls"
    attempts = [d["attempt"] for (d,) in query(db, "SELECT data FROM cairn.history WHERE type = 'ActivityCompleted'")]
    assert set(attempts) == {1}, "rate-limit reschedules burned no attempt"
    assert query(db, "SELECT count(*) FROM cairn.rate_limit_leases") == [(0,)], "every slot was freed"
