"""Fleet rate limits in Postgres with a pinned clock: requests and tokens per minute over a
sliding window that no span exceeds, retry_at, settle, concurrency leases that expire."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cairn import InputValidationError, activity
from cairn.ratelimits import TURN_LEAD_SECONDS, cancel, fitting, reserve, reserve_in_turn, reserve_or_reschedule, settle

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)  # a minute boundary


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def conn(db_url):
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        yield c


async def test_requests_per_minute_sliding_window(conn):
    for i in range(3):
        assert (await reserve(conn, "d", rpm=3, tpm=None, max_concurrency=None, tokens=0, now=at(10 + i))).ok
    r = await reserve(conn, "d", rpm=3, tpm=None, max_concurrency=None, tokens=0, now=at(20))
    assert not r.ok
    assert "3 requests/min" in r.reason
    # The oldest request's one-second bucket [10, 11) leaves the window once all of it is
    # more than 60 s + the 1 s send margin old: at 72.
    assert r.retry_at == at(72 + 0.01)
    assert not (await reserve(conn, "d", rpm=3, tpm=None, max_concurrency=None, tokens=0, now=at(71.9))).ok
    assert (await reserve(conn, "d", rpm=3, tpm=None, max_concurrency=None, tokens=0, now=at(72.01))).ok


async def test_no_span_of_the_window_ever_holds_more_than_the_limit(conn):
    """A steady stream asking every 0.25 s for 5 minutes: whatever 60 s span one picks
    (aligned to minutes or not), it holds at most rpm admitted requests, and the limit is
    used (each minute admits close to rpm)."""
    rpm, admitted = 40, []
    t = 0.0
    while t < 300:
        if (await reserve(conn, "steady", rpm=rpm, tpm=None, max_concurrency=None, tokens=0, now=at(t))).ok:
            admitted.append(t)
        t += 0.25
    worst = max(sum(1 for b in admitted if a <= b < a + 60) for a in admitted)
    assert worst <= rpm
    assert len(admitted) >= 4 * rpm, "the headroom costs little: about rpm per minute gets through"

async def test_refused_callers_are_paced_not_herded(conn):
    """Callers refused together get distinct times one interval apart (62 s / rpm: the
    counted span over the limit), after the moment the window frees; not one shared time."""
    for i in range(3):
        assert (await reserve(conn, "paced", rpm=3, tpm=None, max_concurrency=None, tokens=0, now=at(10 + i))).ok
    refused = [await reserve(conn, "paced", rpm=3, tpm=None, max_concurrency=None, tokens=0, now=at(20 + i * 0.1))
               for i in range(4)]
    assert not any(r.ok for r in refused)
    times = [(r.retry_at - T0).total_seconds() for r in refused]
    interval = 62 / 3
    assert times == pytest.approx([72.01 + k * interval for k in range(4)])


async def test_a_bucket_takes_at_most_its_share(conn):
    """rpm 600 over a minute: 10 a second, 15 with the burst allowance; the 16th waits for
    the next second although the window has room."""
    got = [await reserve(conn, "share", rpm=600, tpm=None, max_concurrency=None, tokens=0, now=at(30.5))
           for _ in range(16)]
    assert [r.ok for r in got] == [True] * 15 + [False]
    assert "paced" in got[-1].reason
    assert got[-1].retry_at == at(31.01)
    assert (await reserve(conn, "share", rpm=600, tpm=None, max_concurrency=None, tokens=0, now=at(31.01))).ok


async def test_a_reservation_given_back_frees_its_request(conn):
    r = await reserve(conn, "back", rpm=1, tpm=None, max_concurrency=1, tokens=5, now=at(1))
    assert r.ok
    assert not (await reserve(conn, "back", rpm=1, tpm=None, max_concurrency=1, tokens=5, now=at(2))).ok
    await cancel(conn, r)  # the call was not made (its breaker opened meanwhile)
    assert (await reserve(conn, "back", rpm=1, tpm=None, max_concurrency=1, tokens=5, now=at(2.5))).ok


async def test_tokens_per_minute_and_settle(conn):
    r1 = await reserve(conn, "t", rpm=None, tpm=1000, max_concurrency=None, tokens=800, now=at(1))
    assert r1.ok
    r2 = await reserve(conn, "t", rpm=None, tpm=1000, max_concurrency=None, tokens=300, now=at(2))
    assert not r2.ok
    assert "1000 tokens/min" in r2.reason
    await settle(conn, r1, tokens=500)  # used fewer than estimated: 300 tokens come back
    assert (await reserve(conn, "t", rpm=None, tpm=1000, max_concurrency=None, tokens=300, now=at(3))).ok
    big = await reserve(conn, "t", rpm=None, tpm=1000, max_concurrency=None, tokens=5000, now=at(4))
    assert not big.ok, "a request bigger than tpm waits for an empty window"


async def test_concurrency_leases_expire_and_settle_frees_them(conn):
    a = await reserve(conn, "c", rpm=None, tpm=None, max_concurrency=2, tokens=0, lease_seconds=30, now=at(0))
    b = await reserve(conn, "c", rpm=None, tpm=None, max_concurrency=2, tokens=0, lease_seconds=30, now=at(1))
    c = await reserve(conn, "c", rpm=None, tpm=None, max_concurrency=2, tokens=0, lease_seconds=30, now=at(2))
    assert (a.ok, b.ok, c.ok) == (True, True, False)
    assert c.retry_at == at(3.01)
    assert "2 calls in flight" in c.reason
    await settle(conn, b, tokens=0)
    assert (await reserve(conn, "c", rpm=None, tpm=None, max_concurrency=2, tokens=0, now=at(3))).ok
    assert not (await reserve(conn, "c", rpm=None, tpm=None, max_concurrency=2, tokens=0, now=at(4))).ok
    # a's worker died: its lease (until 30) expires and frees the slot
    assert (await reserve(conn, "c", rpm=None, tpm=None, max_concurrency=2, tokens=0, now=at(30.5))).ok


async def test_reservations_are_atomic_across_connections(db_url, sql):
    conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(10)]
    try:
        got = await asyncio.gather(*(reserve(c, "race", rpm=None, tpm=4, max_concurrency=None, tokens=1,
                                             now=at(5)) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sum(r.ok for r in got) == 4
    assert sql("SELECT requests FROM cairn.rate_limit_windows WHERE deployment = 'race'") == [(4,)]


async def test_reserve_or_reschedule_raises_reschedule(conn):
    await reserve_or_reschedule(conn, "x", rpm=1, tpm=None, max_concurrency=None, tokens=0)
    with pytest.raises(activity.Reschedule) as e:
        await reserve_or_reschedule(conn, "x", rpm=1, tpm=None, max_concurrency=None, tokens=0)
    assert e.value.kind == "rate_limit"
    assert 0 < e.value.delay <= 121


async def test_bad_limits(conn):
    for kw in ({"rpm": 0}, {"tpm": -1}, {"max_concurrency": 1.5}, {"tokens": -3}, {"priority": -1},
               {"pace": 0.5}):
        args = {"rpm": None, "tpm": None, "max_concurrency": None, "tokens": 0, **kw}
        with pytest.raises(InputValidationError):
            await reserve(conn, "bad", **args)


def test_fitting():
    # A run of n=3 buckets holds at most 3: index 0 holds 2, so a request fits nowhere whose
    # runs include index 0 (indices 0-2), and fits from 3 on.
    assert fitting([2, 1, 0, 0, 0], need=1, limit=3, n=3) == [False, False, False, True, True]
    assert fitting([1, 0, 0, 0], need=1, limit=3, n=3) == [True] * 4
    assert fitting([0, 3, 0, 0, 0], need=1, limit=3, n=2) == [False, False, False, True, True]


def rl(deployment: str, t: float, holder: str | None = None, rpm: int = 3, pace: float | None = 1.5,
       priority: int = 0):
    return {"deployment": deployment, "rpm": rpm, "tpm": None, "max_concurrency": None, "tokens": 0, "now": at(t),
                "holder": holder, "pace": pace, "priority": priority}


async def test_refused_holders_get_tickets_for_the_slots_that_free(conn, sql):
    """Holders refused together are booked one by one into the buckets where the window has
    room (a request leaves per bucket here); their request counts there from the refusal on,
    so a newcomer cannot take a holder's turn; a holder back in its bucket uses its ticket;
    one back early waits for it; one back late gives its bucket back and asks afresh."""
    for i in range(3):
        assert (await reserve(conn, **rl("tk", 10 + i))).ok
    refused = [await reserve(conn, **rl("tk", 20 + i * 0.1, holder=f"h{i}")) for i in range(4)]
    assert not any(r.ok for r in refused)
    assert [(r.retry_at - T0).total_seconds() for r in refused] == pytest.approx([72.01, 73.01, 74.01, 134.01])
    assert sql("SELECT count(*) FROM cairn.rate_limit_tickets WHERE deployment = 'tk'") == [(4,)]
    used = await reserve(conn, **rl("tk", 72.01, holder="h0"))
    assert used.ok
    assert used.window_start == at(72)
    assert not (await reserve(conn, **rl("tk", 72.5))).ok, "the freed slots are promised"
    early = await reserve(conn, **rl("tk", 72.6, holder="h1"))
    assert not early.ok
    assert early.retry_at == at(73.01)
    late = await reserve(conn, **rl("tk", 75.5, holder="h1"))
    assert late.ok
    assert late.window_start == at(75)
    assert sql("SELECT holder FROM cairn.rate_limit_tickets WHERE deployment = 'tk' ORDER BY holder") == \
        [("h2",), ("h3",)]
    assert sql("SELECT extract(epoch FROM window_start - %s)::int, requests FROM cairn.rate_limit_windows "
               "WHERE deployment = 'tk' AND window_start >= %s ORDER BY 1", (T0, at(70))) == \
        [(72, 1), (73, 0), (74, 1), (75, 1), (134, 1)]


async def test_a_holder_comes_back_before_its_turn_and_waits_for_it(conn, sql):
    """A claim on a loaded host takes longer than a short window's bucket (1/20 s of a 3 s
    window; 0.1-0.4 s late was seen on 2 busy cores), and a holder back after its bucket goes
    to the end of the line: every holder did, and 14 calls at 4 a window were not done in
    90 s. So a holder is put off until TURN_LEAD_SECONDS before its turn, and
    reserve_in_turn waits the rest in-process, then takes its ticket."""
    for i in range(3):
        assert (await reserve(conn, **rl("turn", 10 + i))).ok
    refused = await reserve(conn, **rl("turn", 20, holder="h"))
    assert refused.booked
    assert refused.retry_at == at(72.01)
    assert refused.put_off == pytest.approx(72.01 - 20 - TURN_LEAD_SECONDS)
    anonymous = await reserve(conn, **rl("turn", 20))
    assert not anonymous.booked
    assert anonymous.put_off == anonymous.delay, "without a ticket there is no turn to wait for"
    # A turn further off than the lead is not waited for in-process: the refusal is returned.
    asked = []

    async def far_once():
        asked.append(await reserve(conn, **rl("turn", 21, holder="j")))
        return asked[-1]

    far = await reserve_in_turn(far_once)
    assert (far.ok, far.booked, len(asked)) == (False, True, 1)
    assert far.put_off == pytest.approx(far.delay - TURN_LEAD_SECONDS)

    # Back 0.3 s into the lead (its claim was slow): it waits for its turn, then takes it.
    clock, calls = [at(72.01 - TURN_LEAD_SECONDS + 0.3)], []

    async def once():
        r = await reserve(conn, **{**rl("turn", 0, holder="h"), "now": clock[0]})
        calls.append(r)
        if not r.ok:
            clock[0] = r.retry_at  # the pinned clock wakes with the sleep, at the turn
        return r

    taken = await reserve_in_turn(once)
    assert [r.ok for r in calls] == [False, True]
    assert calls[0].booked
    assert calls[0].delay == pytest.approx(TURN_LEAD_SECONDS - 0.3)
    assert taken.window_start == at(72)
    assert sql("SELECT count(*) FROM cairn.rate_limit_tickets WHERE deployment = 'turn' AND holder = 'h'") == [(0,)]



async def test_a_retry_takes_the_soonest_slot_of_a_first_attempt(conn, sql):
    """A retry (priority 1) refused after two first attempts (priority 0) takes the soonest of
    their slots; that holder moves to the slot the retry would have had, and learns it when
    it comes back at its old time."""
    for i in range(3):
        assert (await reserve(conn, **rl("prio", 10 + i))).ok
    first = [await reserve(conn, **rl("prio", 20, holder=f"a{i}")) for i in range(2)]
    assert [r.retry_at for r in first] == [at(72.01), at(73.01)]
    retry = await reserve(conn, **rl("prio", 21, holder="retry", priority=1))
    assert retry.retry_at == at(72.01)
    moved = await reserve(conn, **rl("prio", 72.01, holder="a0"))
    assert not moved.ok
    assert moved.retry_at == at(74.01)
    assert (await reserve(conn, **rl("prio", 72.02, holder="retry", priority=1))).ok
    assert (await reserve(conn, **rl("prio", 74.01, holder="a0"))).ok
    assert sql("SELECT extract(epoch FROM window_start - %s)::int, requests FROM cairn.rate_limit_windows "
               "WHERE deployment = 'prio' AND window_start >= %s ORDER BY 1", (T0, at(70))) == \
        [(72, 1), (73, 1), (74, 1)]


async def test_short_windows_count_their_buckets_exactly(conn):
    """A 2 s window has buckets of 1/30 s; their starts read back from the database must land
    in their own bucket (epoch / width ~ 6e10: flooring put some a bucket early, so a request
    was admitted one bucket before the window had room)."""
    one = {"rpm": 1, "tpm": None, "max_concurrency": None, "tokens": 0, "window_seconds": 2}
    # Bucket 13, [0.4333, 0.4667): one whose start floors a bucket early from T0 on.
    assert (await reserve(conn, "short", **one, now=at(0.44))).ok
    # 64 buckets count (2 s + the 0.1 s margin, in 1/30 s, plus one): free from bucket 77 (2.5667 s)
    assert not (await reserve(conn, "short", **one, now=at(2.56))).ok
    assert (await reserve(conn, "short", **one, now=at(2.57))).ok


async def test_paced_tickets_spread_a_herd_over_buckets(conn):
    """rpm 600, paced: 15 a bucket. the 45 holders refused at once get tickets 15 per bucket."""
    got = [await reserve(conn, **rl("spread", 30.5, holder=f"s{i}", rpm=600)) for i in range(60)]
    assert sum(r.ok for r in got) == 15
    times = Counter(round((r.retry_at - T0).total_seconds(), 2) for r in got if not r.ok)
    assert sorted(times.items()) == [(31.01, 15), (32.01, 15), (33.01, 15)]


async def test_unpaced_an_empty_window_is_spent_at_once(conn):
    """pace=None (a provider that counts over its whole sliding window only): the limit is
    taken in one bucket; the next holder's ticket is for when that bucket leaves the window."""
    got = [await reserve(conn, **rl("burst", 30.5, holder=f"b{i}", rpm=600, pace=None)) for i in range(601)]
    assert sum(r.ok for r in got) == 600
    assert got[-1].retry_at == at(92.01)
