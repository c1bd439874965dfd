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

Reservations of one deployment take turns on its ``cairn.rate_limits`` row lock, so the
check and the increment are atomic across workers. Concurrency slots are leases that
expire: a worker that dies mid-call frees its slot after ``lease_seconds``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cairn.activity import Reschedule
from cairn.engine.queries import q
from cairn.errors import InputValidationError

__all__ = ["Reservation", "cancel", "reserve", "reserve_or_reschedule", "settle", "window_wait"]

WINDOW_SECONDS = 60.0
BUCKETS = 60                     # a window is counted in this many buckets
SEND_MARGIN_SECONDS = 1.0        # reservation-to-arrival allowance, at most...
SEND_MARGIN_FRACTION = 0.02      # ...and at most this part of the window
PACE_BURST = 1.5                 # a bucket takes at most this many times its share of rpm
LEASE_SECONDS = 600.0           # a concurrency slot frees itself after this without settle
CONCURRENCY_RETRY_SECONDS = 1.0  # a full concurrency cap is looked at again this soon
RETRY_MARGIN_SECONDS = 0.01      # retry_at lands just past the moment capacity frees up

Conn = psycopg.AsyncConnection[Any]


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
    """

    ok: bool
    retry_at: datetime | None
    id: str
    deployment: str
    window_start: datetime | None = None
    tokens: int = 0
    now: datetime | None = None
    reason: str = ""

    @property
    def delay(self) -> float:
        """Seconds from the decision to ``retry_at`` (0 when ok)."""
        if self.retry_at is None or self.now is None:
            return 0.0
        return max((self.retry_at - self.now).total_seconds(), 0.0)


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


def bucket_cap(limit: int) -> int:
    """Requests one bucket may take: its share of the limit, times PACE_BURST."""
    return max(1, math.ceil(limit / BUCKETS * PACE_BURST))


def window_wait(limit: int, need: int, buckets: list[tuple[float, float]], at: float, window: float) -> float:
    """Seconds from ``at`` until ``need`` more fits ``limit``: the buckets ``(start, amount)``
    that overlap the window leave it oldest first, each once its whole width is out of the
    window (plus the send margin); 0 if it fits now.
    """
    total = sum(amount for _, amount in buckets)
    if total + need <= limit:
        return 0.0
    span = window + send_margin(window) + bucket_width(window)
    for start, amount in buckets:
        total -= amount
        if total + need <= limit:
            return max(start + span - at, 0.0)
    return 0.0  # unreachable while need <= limit: the last bucket leaves too


async def reserve(conn: Conn, deployment: str, *, rpm: int | None, tpm: int | None, max_concurrency: int | None,
                  tokens: int, lease_seconds: float = LEASE_SECONDS, window_seconds: float = WINDOW_SECONDS,
                  now: datetime | None = None) -> Reservation:
    """Takes one request and ``tokens`` (an estimate) from the deployment's limits, if they fit.

    A request estimated at more than ``tpm`` tokens is counted as ``tpm`` (it could never
    fit otherwise): it waits for an empty window.

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

    Raises:
        InputValidationError: a limit that is not a positive integer, negative tokens.
    """
    for name, value in (("rpm", rpm), ("tpm", tpm), ("max_concurrency", max_concurrency)):
        _check(name, value)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise InputValidationError(f"tokens must be a non-negative integer, got {tokens!r}")
    if not (isinstance(window_seconds, int | float) and 1 <= window_seconds <= 86_400):
        raise InputValidationError(f"window_seconds must be between 1 and 86400, got {window_seconds!r}")
    if not deployment:
        raise InputValidationError("a deployment name must not be empty")
    rid = str(uuid.uuid4())
    if rpm is None and tpm is None and max_concurrency is None:
        return Reservation(True, None, rid, deployment, None, tokens, now)
    tokens_counted = min(tokens, tpm) if tpm is not None else tokens
    width = bucket_width(window_seconds)
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(q("rate_limit_lock"), {"deployment": deployment, "now": now})
        locked = await cur.fetchone()
        assert locked is not None
        at: datetime = locked["now"]
        epoch = at.timestamp()
        current = datetime.fromtimestamp(math.floor(epoch / width) * width, UTC)
        # Every bucket that overlaps (now - window - margin, now] counts in whole.
        oldest = at - timedelta(seconds=window_seconds + send_margin(window_seconds) + width)
        await cur.execute(q("rate_limit_usage"), {"deployment": deployment, "now": at, "oldest": oldest})
        u = await cur.fetchone()
        assert u is not None
        buckets = [(float(b[0]), int(b[1]), int(b[2])) for b in u["buckets"]]
        per = "min" if window_seconds == WINDOW_SECONDS else f"{window_seconds:g} s"
        waits: list[tuple[float, str]] = []
        if rpm is not None:
            wait = window_wait(rpm, 1, [(b[0], b[1]) for b in buckets], epoch, window_seconds)
            if wait > 0:
                waits.append((wait, f"{rpm} requests/{per}"))
            elif buckets and buckets[-1][0] == current.timestamp() and buckets[-1][1] >= bucket_cap(rpm):
                # Paced: no bucket takes more than its share (x PACE_BURST), so a freed
                # window is not spent in one herd.
                waits.append((current.timestamp() + width - epoch, f"{rpm} requests/{per}, paced"))
        if tpm is not None:
            wait = window_wait(tpm, tokens_counted, [(b[0], b[2]) for b in buckets], epoch, window_seconds)
            if wait > 0:
                waits.append((wait, f"{tpm} tokens/{per}"))
        window_waits = bool(waits)
        if max_concurrency is not None and u["leases"] >= max_concurrency:
            slot = CONCURRENCY_RETRY_SECONDS
            if u["first_expiry"] is not None:
                slot = min(slot, (u["first_expiry"] - at).total_seconds())
            waits.append((slot, f"{max_concurrency} calls in flight"))
        if waits:
            seconds, reason = max(waits)
            retry_at = at + timedelta(seconds=seconds + RETRY_MARGIN_SECONDS)
            if window_waits:
                # Pace: each refused caller gets its own time, one interval after the last
                # one handed out, so they come back one by one as the window frees.
                span = window_seconds + send_margin(window_seconds) + width
                interval = span * max(1 / rpm if rpm else 0.0, tokens_counted / tpm if tpm else 0.0)
                tail = locked["queue_tail"]
                if tail is not None and tail + timedelta(seconds=interval) > retry_at:
                    retry_at = tail + timedelta(seconds=interval)
                await conn.execute(q("rate_limit_queue"), {"deployment": deployment, "queue_tail": retry_at})
            return Reservation(False, retry_at, rid, deployment, current, tokens, at,
                               f"{deployment}: at its limit of {reason}")
        await conn.execute(q("rate_limit_take"), {"deployment": deployment, "current": current,
                                                  "tokens": tokens_counted})
        if max_concurrency is not None:
            await conn.execute(q("rate_limit_lease"), {"id": rid, "deployment": deployment, "now": at,
                                                       "lease": lease_seconds})
    return Reservation(True, None, rid, deployment, current, tokens_counted, at)


async def settle(conn: Conn, reservation: Reservation, *, tokens: int) -> None:
    """Corrects the reserved bucket by (actual - estimate) tokens and frees the
    concurrency slot. Settling a refused reservation does nothing."""
    if not reservation.ok or reservation.window_start is None:
        return
    await conn.execute(q("rate_limit_settle"), {
        "deployment": reservation.deployment, "window_start": reservation.window_start,
        "delta": int(tokens) - reservation.tokens, "id": reservation.id})


async def cancel(conn: Conn, reservation: Reservation) -> None:
    """Gives an unused reservation back: the call was not made after all."""
    if not reservation.ok or reservation.window_start is None:
        return
    await conn.execute(q("rate_limit_cancel"), {
        "deployment": reservation.deployment, "window_start": reservation.window_start,
        "tokens": reservation.tokens, "id": reservation.id})


async def reserve_or_reschedule(conn: Conn, deployment: str, *, rpm: int | None, tpm: int | None,
                                max_concurrency: int | None, tokens: int,
                                lease_seconds: float = LEASE_SECONDS,
                                window_seconds: float = WINDOW_SECONDS) -> Reservation:
    """:func:`reserve` for use inside an activity: a refusal raises
    ``activity.Reschedule(kind="rate_limit")`` to when capacity frees up (no attempt burned).

    Raises:
        Reschedule: the deployment is at one of its limits.
    """
    r = await reserve(conn, deployment, rpm=rpm, tpm=tpm, max_concurrency=max_concurrency, tokens=tokens,
                      lease_seconds=lease_seconds, window_seconds=window_seconds)
    if not r.ok:
        raise Reschedule(r.delay, reason=r.reason, kind="rate_limit")
    return r
