"""Fleet rate limits shared by every worker through Postgres: requests per minute, tokens
per minute and a concurrency cap, per deployment (an LLM provider's model, an API key).

:func:`reserve` takes one request and a token estimate if both fit the deployment's
limits, else says when they will (``retry_at``); :func:`settle` corrects the tokens by the
actual usage and frees the concurrency slot. :func:`reserve_or_reschedule` is the form an
activity uses: a refused reservation becomes ``activity.Reschedule(kind="rate_limit")``.

The window slides, as providers' own limits do: requests are counted in buckets of a
sixtieth of the window (a second of a minute), and every bucket that overlaps the last
``window`` seconds counts in whole, plus a small send margin (a request reaches the
provider a little after its reservation). So no span of ``window`` seconds, however placed,
sees more than the limit, at the cost of up to one bucket and the margin of headroom
(~3 % of a minute); a deployment keeps at most ~62 bucket rows.

A ticket's bucket is short (a twentieth of a second in a 3 s window), shorter than a
claim takes on a loaded host, and a holder back after it goes to the end of the line: so a
holder is put back ``TURN_LEAD_SECONDS`` before its turn and waits the rest in-process
(:func:`reserve_in_turn`), where a sleep, not a claim, decides whether it is on time.

Reservations of one deployment take turns on its ``cairn.rate_limits`` row lock
(``cairn.store.ratelimits.locked``), so the check and the increment are atomic across
workers. Concurrency slots are leases that expire: a worker that dies mid-call frees its
slot after ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cairn import activity
from cairn.activity import Reschedule
from cairn.errors import CairnError, InputValidationError
from cairn.store import ratelimits as store

if TYPE_CHECKING:
    from cairn.store.db import Conn

__all__ = ["Reservation", "cancel", "reserve", "reserve_in_turn", "reserve_or_reschedule", "settle"]

WINDOW_SECONDS = 60.0
BUCKETS = 60                     # a window is counted in this many buckets
SEND_MARGIN_SECONDS = 1.0        # reservation-to-arrival allowance, at most...
# ...and at most this part of the window: 0.5 s of a 10 s window. 2 % (0.2 s) let 152
# requests into a 150-per-10-s provider once on a loaded CI host (arrivals 0.1-0.4 s late).
SEND_MARGIN_FRACTION = 0.05
PACE_BURST = 1.5                 # a bucket takes at most this many times its share of rpm
SLOT_LEASE_SECONDS = 600.0           # a concurrency slot frees itself after this without settle
CONCURRENCY_RETRY_SECONDS = 1.0  # a full concurrency cap is looked at again this soon
RETRY_MARGIN_SECONDS = 0.01      # retry_at lands just past the moment capacity frees up
# A ticket holder is put back this long before its turn and waits the rest in-process: a
# claim's delay under load (0.1-0.4 s seen on 2 busy cores) must not make it miss its bucket.
TURN_LEAD_SECONDS = 1.0
TURN_WAITS = 3                   # in-process waits for one turn, at most (each ends in its bucket)


@dataclass(frozen=True)
class Reservation:
    """A reservation's outcome.

    Attributes:
        ok: the request may go ahead; :func:`settle` it afterwards.
        retry_at: when refused, the earliest time enough capacity frees up (database time).
        id: the reservation (and its concurrency lease).
        deployment: the deployment it counts against.
        window_start: the bucket its request and tokens were added to.
        tokens: the token estimate reserved.
        now: the database time of the decision.
        reason: when refused, which limit.
        booked: when refused, the caller (a holder) has a ticket for the bucket at
            ``retry_at``: back then, the ticket is its reservation.
    """

    ok: bool
    retry_at: datetime | None
    id: str
    deployment: str
    window_start: datetime | None = None
    tokens: int = 0
    now: datetime | None = None
    reason: str = ""
    booked: bool = False

    @property
    def delay(self) -> float:
        """Seconds from the decision to ``retry_at`` (0 when ok)."""
        if self.retry_at is None or self.now is None:
            return 0.0
        return max((self.retry_at - self.now).total_seconds(), 0.0)

    @property
    def put_off(self) -> float:
        """Seconds to put a refused caller off for: a ticket holder comes back
        ``TURN_LEAD_SECONDS`` early and waits the rest in :func:`reserve_in_turn`."""
        return max(self.delay - TURN_LEAD_SECONDS, 0.0) if self.booked else self.delay


def _check(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputValidationError(f"{name} must be a positive integer or None, got {value!r}")


def send_margin(window: float) -> float:
    """Seconds added to the window: a request reaches the provider a little after its
    reservation, so a request admitted at the window's edge must still count there."""
    return min(SEND_MARGIN_SECONDS, window * SEND_MARGIN_FRACTION)


def bucket_width(window: float) -> float:
    """The width of a window's buckets: a sixtieth of it (a second of a minute)."""
    return window / BUCKETS


def bucket_cap(limit: int, pace: float = PACE_BURST) -> int:
    """Requests one bucket may take: its share of the limit, times ``pace``."""
    return max(1, math.ceil(limit / BUCKETS * pace))


def window_buckets(window: float) -> int:
    """How many buckets one window counts: a request in bucket k reaches the provider within
    its width plus the send margin, so a span of ``window`` seconds, however placed, sees
    requests from this many consecutive buckets (62 for a minute)."""
    return math.ceil((window + send_margin(window)) / bucket_width(window) - 1e-9) + 1


def fitting(usage: list[int], need: int, limit: int, n: int) -> list[bool]:
    """Per index of ``usage`` (amounts per bucket, oldest first): whether ``need`` more can
    be added there with every run of ``n`` consecutive buckets that holds it staying within
    ``limit``. Buckets past the list are empty."""
    prefix = [0]
    for amount in usage:
        prefix.append(prefix[-1] + amount)
    # full[j]: the run of n buckets ending at j has no room for need more.
    full = [prefix[j + 1] - prefix[max(j + 1 - n, 0)] + need > limit for j in range(len(usage))]
    fits = [False] * len(usage)
    nearest = len(usage) + n  # scanning down: the nearest full run ending at or after b
    for b in range(len(usage) - 1, -1, -1):
        if full[b]:
            nearest = b
        fits[b] = nearest >= b + n
    return fits


async def reserve(conn: Conn, deployment: str, *, rpm: int | None, tpm: int | None, max_concurrency: int | None,
                  tokens: int, lease_seconds: float = SLOT_LEASE_SECONDS, window_seconds: float = WINDOW_SECONDS,
                  now: datetime | None = None, holder: str | None = None,
                  pace: float | None = PACE_BURST, priority: int = 0) -> Reservation:
    """Takes one request and ``tokens`` (an estimate) from the deployment's limits, if they fit.

    A request estimated at more than ``tpm`` tokens is counted as ``tpm`` (it could never
    fit otherwise): it waits for an empty window.

    A refused caller that names itself (``holder``: an activity's idempotency key, the same
    on every attempt) is booked into the earliest future bucket where its request fits and
    holds a ticket for it: the request is counted there from now on, and when the holder
    comes back in that bucket the ticket is its reservation. So refused callers return as
    fast as the window frees, each to a slot of its own. Without a holder, refused callers
    get distinct retry times one interval (span ÷ limit) apart.

    Args:
        conn: a connection (autocommit, or inside the caller's transaction).
        deployment: what the limits apply to.
        rpm: requests per minute (None: no limit).
        tpm: tokens per minute (None: no limit).
        max_concurrency: calls in flight at once (None: no limit).
        tokens: the token estimate of this request.
        lease_seconds: the concurrency slot frees itself after this if never settled.
        window_seconds: the window ``rpm`` and ``tpm`` count over (default a minute; tests
            and per-second limits use shorter ones). Use one value per deployment.
        now: the time to decide at (tests); default the database's clock.
        holder: who asks, for its ticket (see above); None: no ticket.
        priority: a refused holder of higher priority (a retry of a call that failed: 1)
            takes the soonest later ticket of a lower one, whose holder moves to the slot
            it would have had: a run of failures does not wait for a slot per attempt.
        pace: a bucket takes at most this many times its share of ``rpm`` (default
            ``PACE_BURST``), for providers that enforce a minute's limit over shorter
            periods; None: no pacing, an empty window may be spent at once (providers that
            count over the whole sliding window only).

    Raises:
        InputValidationError: a limit that is not a positive integer, negative tokens.
    """
    for name, value in (("rpm", rpm), ("tpm", tpm), ("max_concurrency", max_concurrency)):
        _check(name, value)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise InputValidationError(f"tokens must be a non-negative integer, got {tokens!r}")
    if not (isinstance(window_seconds, int | float) and 1 <= window_seconds <= 86_400):
        raise InputValidationError(f"window_seconds must be between 1 and 86400, got {window_seconds!r}")
    if pace is not None and not (isinstance(pace, int | float) and pace >= 1):
        raise InputValidationError(f"pace must be at least 1 or None, got {pace!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise InputValidationError(f"priority must be an integer from 0 to 100, got {priority!r}")
    if not deployment:
        raise InputValidationError("a deployment name must not be empty")
    rid = str(uuid.uuid4())
    if rpm is None and tpm is None and max_concurrency is None:
        return Reservation(True, None, rid, deployment, None, tokens, now)
    tokens_counted = min(tokens, tpm) if tpm is not None else tokens
    async with store.locked(conn, deployment, now) as locked:
        at = locked.now
        ledger = _Ledger(window_seconds, at)
        u = await store.usage(conn, deployment, at, ledger.oldest, holder or "")
        ledger.load(u.buckets)
        per = "min" if window_seconds == WINDOW_SECONDS else f"{window_seconds:g} s"
        if u.ticket is not None:
            booked, booked_tokens = ledger.of_start(u.ticket[0]), u.ticket[1]
            if booked > ledger.current:  # early: its turn has not come
                return Reservation(False, ledger.start(booked) + timedelta(seconds=RETRY_MARGIN_SECONDS), rid,
                                   deployment, None, tokens, at, f"{deployment}: waiting for its turn ({per} limits)",
                                   booked=True)
            if booked == ledger.current and (max_concurrency is None or u.leases < max_concurrency):
                await store.ticket_used(conn, deployment, holder)
                await _lease(conn, rid, deployment, at, max_concurrency, lease_seconds)
                return Reservation(True, None, rid, deployment, ledger.start(booked), booked_tokens, at)
            # Late (or no free slot): the request leaves the ticket's bucket; ask afresh.
            await store.ticket_dropped(conn, deployment, holder, ledger.start(booked), booked_tokens)
            ledger.remove(booked, booked_tokens)
        if max_concurrency is not None and u.leases >= max_concurrency:
            slot = CONCURRENCY_RETRY_SECONDS
            if u.first_expiry is not None:
                slot = min(slot, (u.first_expiry - at).total_seconds())
            return Reservation(False, at + timedelta(seconds=slot + RETRY_MARGIN_SECONDS), rid, deployment, None,
                               tokens, at, f"{deployment}: at its limit of {max_concurrency} calls in flight")
        limits = [(rpm, 1, 0, f"{rpm} requests/{per}"), (tpm, tokens_counted, 1, f"{tpm} tokens/{per}")]
        cap = bucket_cap(rpm, pace) if rpm is not None and pace is not None else None
        slot, reason = ledger.first_slot([(lim, need, col, why) for lim, need, col, why in limits if lim is not None],
                                         cap, f"{rpm} requests/{per}, paced")
        if slot == ledger.current:
            await store.take(conn, deployment, ledger.start(slot), tokens_counted)
            await _lease(conn, rid, deployment, at, max_concurrency, lease_seconds)
            return Reservation(True, None, rid, deployment, ledger.start(slot), tokens_counted, at)
        retry_at = ledger.start(slot) + timedelta(seconds=RETRY_MARGIN_SECONDS)
        booked = False
        if holder and slot < ledger.horizon:
            booked = True
            booked_at = ledger.start(slot)
            if priority > 0:
                taken = await store.displace(conn, deployment, priority, ledger.start(ledger.current), booked_at,
                                             tokens_counted if tpm is not None else None)
                if taken is not None:
                    booked_at = taken
                    retry_at = booked_at + timedelta(seconds=RETRY_MARGIN_SECONDS)
            # The request counts in `slot` either way: ours, or the displaced holder's.
            await store.book(conn, deployment, holder, booked_at, ledger.start(slot), tokens_counted, priority)
        else:
            # No ticket: each refused caller gets its own time, one interval after the last
            # one handed out, so they come back one by one as the window frees.
            interval = ledger.span * max(1 / rpm if rpm else 0.0, tokens_counted / tpm if tpm else 0.0)
            tail = locked.queue_tail
            if tail is not None and tail + timedelta(seconds=interval) > retry_at:
                retry_at = tail + timedelta(seconds=interval)
            await store.queue(conn, deployment, retry_at)
        return Reservation(False, retry_at, rid, deployment, None, tokens, at,
                           f"{deployment}: at its limit of {reason}", booked=booked)


async def reserve_in_turn(reserve_once: Callable[[], Awaitable[Reservation]]) -> Reservation:
    """Runs ``reserve_once`` (a :func:`reserve` call; it may open a connection of its own,
    which is then not held while waiting) and, while the caller holds a ticket whose turn
    comes within ``TURN_LEAD_SECONDS``, sleeps until that turn and reserves again. A refusal
    it returns is to be put off for ``Reservation.put_off``."""
    r = await reserve_once()
    for _ in range(TURN_WAITS):
        if r.ok or not r.booked or r.delay > TURN_LEAD_SECONDS:
            break
        await asyncio.sleep(r.delay)
        r = await reserve_once()
    return r


async def _lease(conn: Conn, rid: str, deployment: str, at: datetime, max_concurrency: int | None,
                 lease_seconds: float) -> None:
    if max_concurrency is not None:
        await store.lease(conn, rid, deployment, at, lease_seconds)


class _Ledger:
    """A deployment's buckets as the reservation sees them: from the oldest that still
    counts (``n - 1`` before the current one) to the last ticket, by bucket index."""

    AHEAD_WINDOWS = 10  # tickets are booked at most this many windows ahead

    def __init__(self, window: float, at: datetime) -> None:
        self.width = bucket_width(window)
        self.n = window_buckets(window)
        self.span = self.n * self.width
        self.current = self.index(at.timestamp())
        self.oldest = self.start(self.current - self.n + 1) - timedelta(seconds=self.width / 2)
        self.horizon = self.current + self.AHEAD_WINDOWS * self.n
        self.requests: dict[int, int] = {}
        self.tokens: dict[int, int] = {}

    def index(self, epoch: float) -> int:
        """The bucket holding a moment."""
        return math.floor(epoch / self.width + 1e-6)

    def of_start(self, epoch: float) -> int:
        """The bucket a stored start belongs to: rounded, not floored, since a start read back
        from the database (microseconds) over a width like 1/30 s may land a hair below
        its bucket's boundary (epoch / width ~ 5e10, where a float's spacing is ~1e-5)."""
        return round(epoch / self.width)

    def start(self, index: int) -> datetime:
        return datetime.fromtimestamp(round(index * self.width, 6), UTC)

    def load(self, buckets: list[list[Any]]) -> None:
        for start, requests, tokens in buckets:
            i = self.of_start(float(start))
            self.requests[i] = self.requests.get(i, 0) + int(requests)
            self.tokens[i] = self.tokens.get(i, 0) + int(tokens)

    def remove(self, index: int, tokens: int) -> None:
        self.requests[index] = max(self.requests.get(index, 0) - 1, 0)
        self.tokens[index] = max(self.tokens.get(index, 0) - tokens, 0)

    def first_slot(self, limits: list[tuple[int, int, int, str]], cap: int | None,
                   paced: str) -> tuple[int, str]:
        """The first bucket from the current one on where a request fits every limit and
        the pace cap (at most ``horizon``), and why the current one does not."""
        low = self.current - self.n + 1
        # Past the last booked bucket's windows every bucket is empty, so the first of them fits.
        end = min(self.horizon, max([self.current, *self.requests, *self.tokens]) + self.n + 1)
        size = end - low
        checks = [(fitting([(self.requests if col == 0 else self.tokens).get(low + k, 0) for k in range(size)],
                           need, limit, self.n), why) for limit, need, col, why in limits]
        if cap is not None:
            checks.append(([self.requests.get(low + k, 0) < cap for k in range(size)], paced))
        reason = next((why for fits, why in checks if not fits[self.current - low]), "")
        for slot in range(self.current, end):
            if all(fits[slot - low] for fits, _ in checks):
                return slot, reason
        return end, reason


async def settle(conn: Conn, reservation: Reservation, *, tokens: int) -> None:
    """Corrects the reserved bucket by (actual - estimate) tokens and frees the
    concurrency slot. Settling a refused reservation does nothing."""
    if not reservation.ok or reservation.window_start is None:
        return
    await store.settle(conn, reservation.deployment, reservation.window_start, int(tokens) - reservation.tokens,
                       reservation.id)


async def cancel(conn: Conn, reservation: Reservation) -> None:
    """Gives an unused reservation back: the call was not made after all."""
    if not reservation.ok or reservation.window_start is None:
        return
    await store.cancel(conn, reservation.deployment, reservation.window_start, reservation.tokens, reservation.id)


async def reserve_or_reschedule(conn: Conn, deployment: str, *, rpm: int | None, tpm: int | None,
                                max_concurrency: int | None, tokens: int,
                                lease_seconds: float = SLOT_LEASE_SECONDS, window_seconds: float = WINDOW_SECONDS,
                                pace: float | None = PACE_BURST, priority: int = 0) -> Reservation:
    """:func:`reserve` for use inside an activity: a refusal raises
    ``activity.Reschedule(kind="rate_limit")`` to when capacity frees up (no attempt burned).
    The activity is the holder of its ticket (its idempotency key): it comes back a little
    before its turn and waits for it here (:func:`reserve_in_turn`).

    Raises:
        Reschedule: the deployment is at one of its limits.
    """
    try:
        holder: str | None = activity.info().idempotency_key
    except CairnError:
        holder = None  # called outside an activity
    r = await reserve_in_turn(lambda: reserve(
        conn, deployment, rpm=rpm, tpm=tpm, max_concurrency=max_concurrency, tokens=tokens,
        lease_seconds=lease_seconds, window_seconds=window_seconds, holder=holder, pace=pace, priority=priority))
    if not r.ok:
        raise Reschedule(r.put_off, reason=r.reason, kind="rate_limit")
    return r
