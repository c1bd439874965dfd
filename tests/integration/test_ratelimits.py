"""Fleet rate limits in Postgres with a pinned clock: requests and tokens per minute over a
sliding window that no span exceeds, retry_at, settle, concurrency leases that expire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cairn import InputValidationError, activity
from cairn.ratelimits import cancel, reserve, reserve_or_reschedule, settle, window_wait

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
    for kw in ({"rpm": 0}, {"tpm": -1}, {"max_concurrency": 1.5}, {"tokens": -3}):
        args = {"rpm": None, "tpm": None, "max_concurrency": None, "tokens": 0, **kw}
        with pytest.raises(InputValidationError):
            await reserve(conn, "bad", **args)


def test_window_wait():
    # rpm 3 over 60 s; buckets of 1 s; the send margin is 1 s: a bucket leaves at start + 62
    assert window_wait(3, 1, [(10.0, 2), (11.0, 1)], at=20.0, window=60) == pytest.approx(52.0)
    assert window_wait(2, 1, [(10.0, 1), (11.0, 2)], at=20.0, window=60) == pytest.approx(53.0)
    assert window_wait(3, 1, [(10.0, 2)], at=20.0, window=60) == 0.0
    # a 2 s window: buckets of 1/30 s, the margin 2 % of it
    assert window_wait(1, 1, [(0.0, 1)], at=0.5, window=2) == pytest.approx(2 + 0.04 + 2 / 60 - 0.5)
