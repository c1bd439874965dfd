"""Circuit breakers in Postgres, driven with a pinned clock (``now=``): transitions on
count and time windows, minimum calls, slow calls, recovery growth, the cluster-wide
half-open probe limit with lease expiry, stale generations, trips, forced-open, disabled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cairn import breakers
from cairn.breakers import BreakerConfig, BreakerNotFound, window_add, window_stats

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def conn(db_url):
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        yield c


async def call(conn, name, config, t, *, success, duration=None):
    """One admitted call and its outcome at time t; returns the admission."""
    a = await breakers.admit(conn, name, config, now=at(t))
    if a.permitted:
        await breakers.record(conn, name, a, success=success, duration=duration, now=at(t))
    return a


async def row(sql, name):
    rows = sql("SELECT state, generation, open_until, consecutive_opens, successful, failed, slow, not_permitted "
               "FROM cairn.breakers WHERE name = %s", (name,))
    assert rows, f"no breaker {name}"
    keys = ("state", "generation", "open_until", "consecutive_opens", "successful", "failed", "slow",
            "not_permitted")
    return dict(zip(keys, rows[0], strict=True))


def transitions(sql, name):
    return [(f, t) for f, t in sql("SELECT from_state, to_state FROM cairn.breaker_events WHERE name = %s "
                                   "ORDER BY id", (name,))]


async def test_count_window_opens_only_past_minimum_calls_and_threshold(conn, sql):
    cfg = BreakerConfig(window="count", window_size=4, minimum_calls=4, failure_rate_threshold=75,
                        recovery_timeout=10)
    for i in range(2):
        await call(conn, "db", cfg, i, success=False)
    await call(conn, "db", cfg, 2, success=True)
    r = await row(sql, "db")
    assert (r["state"], r["generation"]) == ("closed", 1), "3 calls < minimum_calls: stays closed"
    await call(conn, "db", cfg, 3, success=True)  # 2/4 = 50 % < 75 %
    assert (await row(sql, "db"))["state"] == "closed"
    await call(conn, "db", cfg, 4, success=False)  # the oldest F is replaced by an F: still 50 %
    assert (await row(sql, "db"))["state"] == "closed"
    await call(conn, "db", cfg, 5, success=False)  # replaces the 2nd F: 50 %
    assert (await row(sql, "db"))["state"] == "closed"
    await call(conn, "db", cfg, 6, success=False)  # replaces an S: 3/4 = 75 %
    r = await row(sql, "db")
    assert (r["state"], r["generation"], r["open_until"]) == ("open", 2, at(16))
    assert (r["successful"], r["failed"]) == (2, 5)
    assert transitions(sql, "db") == [("closed", "open")]
    refused = await breakers.admit(conn, "db", cfg, now=at(10))
    assert (refused.permitted, refused.retry_at, refused.state) == (False, at(16), "open")
    assert (await row(sql, "db"))["not_permitted"] == 1


async def test_time_window_forgets_old_calls(conn, sql):
    cfg = BreakerConfig(window="time", window_size=10, minimum_calls=3, failure_rate_threshold=50)
    await call(conn, "t", cfg, 0, success=False)
    await call(conn, "t", cfg, 1, success=False)
    # 20 s later both failures are out of the window: 1 success, 1 failure -> 2 calls < 3
    await call(conn, "t", cfg, 20, success=True)
    await call(conn, "t", cfg, 21, success=False)
    assert (await row(sql, "t"))["state"] == "closed"
    await call(conn, "t", cfg, 22, success=True)  # 1/3 failed
    assert (await row(sql, "t"))["state"] == "closed"
    await call(conn, "t", cfg, 23, success=False)  # 2/4 = 50 %
    assert (await row(sql, "t"))["state"] == "open"


def test_window_math():
    cfg = BreakerConfig(window="time", window_size=120, minimum_calls=1)
    w: dict = {}
    for t in (0, 1, 2, 3):  # 2 s buckets: [0,1] and [2,3]
        w = window_add(cfg, w, 1000.0 + t, failed=t % 2 == 0, slow=t == 3)
    assert window_stats(cfg, w, 1003.0) == (4, 2, 1)
    assert window_stats(cfg, w, 1121.0) == (2, 1, 1), "the first bucket (start 1000) left the window"
    assert window_stats(cfg, w, 1200.0) == (0, 0, 0)
    ring = BreakerConfig(window="count", window_size=3, minimum_calls=1)
    w = {}
    for failed in (True, True, False, False):
        w = window_add(ring, w, 0.0, failed=failed, slow=False)
    assert window_stats(ring, w, 0.0) == (3, 1, 0)


async def test_slow_call_rate_opens_it(conn, sql):
    cfg = BreakerConfig(minimum_calls=2, slow_call_duration_threshold=1.0, slow_call_rate_threshold=50)
    await call(conn, "slow", cfg, 0, success=True, duration=0.5)
    assert (await row(sql, "slow"))["state"] == "closed"
    await call(conn, "slow", cfg, 1, success=True, duration=2.5)  # 1/2 slow = 50 %
    r = await row(sql, "slow")
    assert (r["state"], r["slow"], r["failed"]) == ("open", 1, 0)
    reason = sql("SELECT reason FROM cairn.breaker_events WHERE name = 'slow'")[0][0]
    assert "slow-call rate 50.0%" in reason


async def test_recovery_timeout_grows_on_reopens_and_resets_on_close(conn, sql):
    cfg = BreakerConfig(minimum_calls=1, recovery_timeout=10, recovery_multiplier=2, max_recovery_timeout=25,
                        permitted_calls_in_half_open=1)
    await call(conn, "grow", cfg, 0, success=False)
    assert (await row(sql, "grow"))["open_until"] == at(10)
    await call(conn, "grow", cfg, 10, success=False)  # half-open probe fails: 2nd open, 20 s
    r = await row(sql, "grow")
    assert (r["state"], r["open_until"], r["consecutive_opens"]) == ("open", at(30), 2)
    await call(conn, "grow", cfg, 30, success=False)  # 3rd: 40 s capped at 25 s
    assert (await row(sql, "grow"))["open_until"] == at(55)
    await call(conn, "grow", cfg, 55, success=True)  # the probe succeeds: closed
    r = await row(sql, "grow")
    assert (r["state"], r["consecutive_opens"]) == ("closed", 0)
    await call(conn, "grow", cfg, 60, success=False)
    assert (await row(sql, "grow"))["open_until"] == at(70), "back to the base recovery timeout"
    assert transitions(sql, "grow") == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"),
        ("half_open", "open"), ("open", "half_open"), ("half_open", "closed"), ("closed", "open")]


async def test_half_open_probe_limit_and_lease_expiry(conn, sql):
    cfg = BreakerConfig(minimum_calls=1, recovery_timeout=10, permitted_calls_in_half_open=2,
                        probe_lease_seconds=5)
    await call(conn, "probe", cfg, 0, success=False)
    a = await breakers.admit(conn, "probe", cfg, now=at(10))
    b = await breakers.admit(conn, "probe", cfg, now=at(11))
    c = await breakers.admit(conn, "probe", cfg, now=at(12))
    assert (a.permitted, b.permitted, c.permitted) == (True, True, False)
    assert a.probe_id
    assert b.probe_id
    assert a.generation == b.generation == 3
    assert c.retry_at == at(15), "refused until the first probe lease expires"
    # a's prober crashed: its lease expires at 15 and frees a slot; b's (until 16) holds one.
    d = await breakers.admit(conn, "probe", cfg, now=at(15.5))
    assert d.permitted
    e = await breakers.admit(conn, "probe", cfg, now=at(15.6))
    assert not e.permitted
    await breakers.record(conn, "probe", b, success=True, now=at(15.7))
    await breakers.record(conn, "probe", d, success=True, now=at(15.8))
    r = await row(sql, "probe")
    assert r["state"] == "closed", "two successful probes close it"
    assert sql("SELECT count(*) FROM cairn.breaker_probes")[0][0] == 0


async def test_half_open_limit_holds_for_concurrent_admissions(db_url, sql):
    cfg = BreakerConfig(minimum_calls=1, recovery_timeout=1, permitted_calls_in_half_open=3)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        await call(c, "race", cfg, 0, success=False)
    conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(12)]
    try:
        results = await asyncio.gather(*(breakers.admit(c, "race", cfg, now=at(5)) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sum(a.permitted for a in results) == 3
    assert sql("SELECT count(*) FROM cairn.breaker_probes WHERE name = 'race'")[0][0] == 3
    assert transitions(sql, "race") == [("closed", "open"), ("open", "half_open")]


async def test_stale_outcomes_change_nothing(conn, sql):
    cfg = BreakerConfig(minimum_calls=1, recovery_timeout=10, permitted_calls_in_half_open=2)
    old = await breakers.admit(conn, "stale", cfg, now=at(0))  # closed, generation 1
    await call(conn, "stale", cfg, 1, success=False)  # opens: generation 2
    await breakers.record(conn, "stale", old, success=True, now=at(2))
    r = await row(sql, "stale")
    assert (r["state"], r["generation"]) == ("open", 2)
    # half-open (gen 3): p1 and p2 probe; p1 fails -> re-open (gen 4); p2's success is stale
    p1 = await breakers.admit(conn, "stale", cfg, now=at(11))
    p2 = await breakers.admit(conn, "stale", cfg, now=at(11))
    await breakers.record(conn, "stale", p1, success=False, now=at(12))
    await breakers.record(conn, "stale", p2, success=True, now=at(12))
    r = await row(sql, "stale")
    assert (r["state"], r["generation"]) == ("open", 4), "a stale success does not close it"
    # half-open again (gen 5), q1 + q2 succeed -> closed (gen 6); a stale failure of gen 5 cannot re-open it
    q1 = await breakers.admit(conn, "stale", cfg, now=at(40))
    q2 = await breakers.admit(conn, "stale", cfg, now=at(40))
    q3_stale = p1  # admitted under gen 3
    await breakers.record(conn, "stale", q1, success=True, now=at(41))
    await breakers.record(conn, "stale", q2, success=True, now=at(41))
    assert (await row(sql, "stale"))["state"] == "closed"
    await breakers.record(conn, "stale", q3_stale, success=False, now=at(42))
    await breakers.record(conn, "stale", old, success=False, now=at(42))
    r = await row(sql, "stale")
    assert (r["state"], r["generation"]) == ("closed", 6), "stale failures do not re-open it"
    listed = next(b for b in await breakers.describe(conn, now=at(42)) if b["name"] == "stale")
    assert listed["calls_in_window"] == 0, "stale outcomes stay out of the window"


async def test_a_throttle_opens_until_retry_after_then_resumes_closed(conn, sql):
    cfg = BreakerConfig(recovery_timeout=5, window_size=10, minimum_calls=10)
    await call(conn, "llm:m:chat", cfg, 0, success=False)  # one failure in the window
    await breakers.trip(conn, "llm:m:chat", at(30), reason="429 Retry-After: 30", config=cfg, now=at(1))
    a = await breakers.admit(conn, "llm:m:chat", cfg, now=at(5))
    assert (a.permitted, a.retry_at, a.delay) == (False, at(30), 25.0)
    await breakers.trip(conn, "llm:m:chat", at(20), reason="an earlier Retry-After", now=at(6))
    r = await row(sql, "llm:m:chat")
    assert r["open_until"] == at(30), "open_until only moves later"
    assert r["consecutive_opens"] == 0, "a throttle is not a failure: no escalation"
    after = await breakers.admit(conn, "llm:m:chat", cfg, now=at(30))
    assert (after.permitted, after.state, after.probe_id) == (True, "closed", None), \
        "the model never failed: no half-open round after a Retry-After"
    listed = next(b for b in await breakers.describe(conn, now=at(30)) if b["name"] == "llm:m:chat")
    assert listed["calls_in_window"] == 1, "the window from before the throttle is kept"
    assert transitions(sql, "llm:m:chat") == [("closed", "open"), ("open", "closed")]


async def test_a_throttle_on_a_half_open_probe_waits_retry_after_and_does_not_escalate(conn, sql):
    """The defect: a 429 with Retry-After: 3 on the probe re-opened the breaker for
    recovery x multiplier (~60 s) before the 3 s applied."""
    cfg = BreakerConfig(recovery_timeout=30, recovery_multiplier=2, window_size=2, minimum_calls=2,
                        permitted_calls_in_half_open=1)
    for t in (0, 1):
        await call(conn, "probe429", cfg, t, success=False)
    assert (await row(sql, "probe429"))["open_until"] == at(31)
    probe = await breakers.admit(conn, "probe429", cfg, now=at(31))
    assert (probe.permitted, probe.state) == (True, "half_open")
    # the probe got 429 + Retry-After: 3 (what the chat activity does: no outcome, a trip)
    await breakers.release(conn, probe)
    await breakers.trip(conn, "probe429", seconds=3, reason="429: retry after 3 s", config=cfg, now=at(32))
    r = await row(sql, "probe429")
    assert (r["state"], r["open_until"], r["consecutive_opens"]) == ("open", at(35), 1)
    assert not (await breakers.admit(conn, "probe429", cfg, now=at(34))).permitted
    again = await breakers.admit(conn, "probe429", cfg, now=at(35))
    assert (again.permitted, again.state) == (True, "half_open"), "back to probing after 3 s, not 60"
    await breakers.record(conn, "probe429", again, success=True, now=at(36))
    assert (await row(sql, "probe429"))["state"] == "closed"


async def test_refusing_for_is_the_last_look_before_a_call(conn):
    cfg = BreakerConfig()
    await breakers.admit(conn, "last", cfg, now=at(0))
    assert await breakers.refusing_for(conn, "last", now=at(1)) is None
    await breakers.trip(conn, "last", seconds=3, reason="429", config=cfg, now=at(1))
    assert await breakers.refusing_for(conn, "last", now=at(2)) == 2.0
    assert await breakers.refusing_for(conn, "last", now=at(4)) is None, "past Retry-After it would admit"
    await breakers.trip(conn, "last", seconds=9, forced=True, reason="402", config=cfg, now=at(5))
    assert await breakers.refusing_for(conn, "last", now=at(6)) == cfg.recovery_timeout
    await breakers.reset(conn, "last")
    await breakers.trip(conn, "last", seconds=9, forced=True, reason="402", config=BreakerConfig(recovery_timeout=7),
                        now=at(7))
    assert await breakers.refusing_for(conn, "last", now=at(8)) == 7.0, "the breaker's own config"


async def test_a_call_refused_while_probes_run_looks_again_soon(conn, sql):
    """Probes may close the breaker any moment: a refused call comes back within
    HALF_OPEN_RECHECK_SECONDS, not after a whole recovery timeout."""
    cfg = BreakerConfig(minimum_calls=1, window_size=1, recovery_timeout=30, permitted_calls_in_half_open=1)
    await call(conn, "recheck", cfg, 0, success=False)
    probe = await breakers.admit(conn, "recheck", cfg, now=at(30))
    refused = await breakers.admit(conn, "recheck", cfg, now=at(31))
    assert (probe.permitted, refused.permitted) == (True, False)
    assert refused.retry_at == at(31 + breakers.HALF_OPEN_RECHECK_SECONDS)


async def test_a_running_probe_keeps_its_slot_past_its_lease(conn, sql):
    """Slow calls: a probe renews its lease while it runs, so no second probe is admitted
    however long the first takes; a crashed prober's lease still runs out."""
    cfg = BreakerConfig(recovery_timeout=10, window_size=2, minimum_calls=2, permitted_calls_in_half_open=1,
                        probe_lease_seconds=60)
    for t in (0, 1):
        await call(conn, "slow", cfg, t, success=False)
    probe = await breakers.admit(conn, "slow", cfg, now=at(11))
    assert probe.permitted
    for t in (31, 51, 71, 91):  # renewed every lease / 3 while the call runs
        await breakers.renew_probe(conn, probe, 60, now=at(t))
        assert not (await breakers.admit(conn, "slow", cfg, now=at(t + 1))).permitted
    # the prober crashed after its last renewal: its slot frees a lease later
    assert (await breakers.admit(conn, "slow", cfg, now=at(151))).permitted


async def test_forced_open_until_an_operator_closes_it(conn, sql):
    cfg = BreakerConfig(recovery_timeout=5)
    await breakers.trip(conn, "quota", at(10), forced=True, reason="402 quota exhausted", config=cfg, now=at(0))
    a = await breakers.admit(conn, "quota", cfg, now=at(1000))
    assert (a.permitted, a.state, a.retry_at) == (False, "forced_open", at(1005))
    await breakers.trip(conn, "quota", at(2000), reason="a 429 meanwhile", now=at(1001))
    assert (await row(sql, "quota"))["state"] == "forced_open", "a plain trip leaves forced-open alone"
    await breakers.close(conn, "quota", now=at(1002))
    assert (await breakers.admit(conn, "quota", cfg, now=at(1003))).permitted
    assert transitions(sql, "quota") == [("closed", "forced_open"), ("forced_open", "closed")]


async def test_disabled_admits_everything_and_records_nothing(conn, sql):
    cfg = BreakerConfig(minimum_calls=1)
    await breakers.admit(conn, "off", cfg, now=at(0))
    await breakers.disable(conn, "off", now=at(0))
    for i in range(5):
        a = await call(conn, "off", cfg, i + 1, success=False)
        assert (a.permitted, a.state) == (True, "disabled")
    r = await row(sql, "off")
    assert (r["state"], r["failed"], r["successful"]) == ("disabled", 0, 0)
    await breakers.trip(conn, "off", at(100), reason="429", now=at(10))
    assert (await row(sql, "off"))["state"] == "disabled"
    await breakers.enable(conn, "off", now=at(11))
    assert (await row(sql, "off"))["state"] == "closed"
    with pytest.raises(BreakerNotFound):
        await breakers.close(conn, "nope")


async def test_config_first_writer_wins(conn, sql):
    await breakers.admit(conn, "cfg", BreakerConfig(minimum_calls=7), now=at(0))
    await breakers.admit(conn, "cfg", BreakerConfig(minimum_calls=3), now=at(1))
    assert sql("SELECT config ->> 'minimum_calls' FROM cairn.breakers WHERE name = 'cfg'")[0][0] == "7"
    await breakers.reset(conn, "cfg")
    await breakers.admit(conn, "cfg", BreakerConfig(minimum_calls=3), now=at(2))
    assert sql("SELECT config ->> 'minimum_calls' FROM cairn.breakers WHERE name = 'cfg'")[0][0] == "3"


async def test_a_half_open_round_is_judged_by_its_probes_failure_rate(conn, sql):
    """The defect: the first failed probe re-opened the breaker, demanding 0 % failures of a
    model the closed breaker tolerates below the threshold. A provider back at its usual
    30 % errors (the storm) then re-opened two rounds in three, each open twice as long:
    workflows waited minutes on a healthy provider. Now 1 failure of 3 probes (33 % < 50 %)
    closes it; 2 of 3 re-open it at the second, without a third probe."""
    cfg = BreakerConfig(minimum_calls=1, recovery_timeout=10, permitted_calls_in_half_open=3)
    await call(conn, "rate", cfg, 0, success=False)  # opens until 10
    probes = [await breakers.admit(conn, "rate", cfg, now=at(11)) for _ in range(4)]
    assert [p.permitted for p in probes] == [True, True, True, False], "3 probes, a 4th refused"
    for probe, ok in zip(probes[:3], [True, False, True], strict=True):
        await breakers.record(conn, "rate", probe, success=ok, now=at(12))
    assert (await row(sql, "rate"))["state"] == "closed", "1 failed probe of 3: 33 % < 50 %"
    await call(conn, "rate", cfg, 13, success=False)  # opens again until 23
    probes = [await breakers.admit(conn, "rate", cfg, now=at(24)) for _ in range(3)]
    await breakers.record(conn, "rate", probes[0], success=False, now=at(25))
    assert (await row(sql, "rate"))["state"] == "half_open", "1 of 3 failed: the round goes on"
    await breakers.record(conn, "rate", probes[1], success=False, now=at(25))
    r = await row(sql, "rate")
    assert (r["state"], r["consecutive_opens"]) == ("open", 2), "2 of 3 failed: 67 % >= 50 %, at once"
    assert transitions(sql, "rate") == [("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
                                        ("closed", "open"), ("open", "half_open"), ("half_open", "open")]
