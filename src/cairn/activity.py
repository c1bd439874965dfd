"""The authoring API for activities: the functions that do the real side effects.

An activity runs at least once; each result is recorded exactly once. Use
:func:`info` for the attempt number and a stable idempotency key to hand to the systems
you call, and :func:`heartbeat` to report progress from a long attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, overload

from cairn.breakers import BreakerConfig
from cairn.errors import CairnError, ConfigurationError
from cairn.options import Signature, to_payload

__all__ = ["ActivityDefinition", "ActivityInfo", "Reschedule", "defn", "heartbeat", "info", "is_cancelled"]

RESCHEDULE_KINDS = ("throttle", "breaker", "rate_limit")


class Reschedule(Exception):
    """Raise from an activity to put the attempt back ``delay`` seconds from now without
    burning an attempt (a throttle: a 429's Retry-After, an open breaker, a rate limit).

    The worker adds 0-10 % jitter (and up to 1 s more for ``kind="breaker"``), counts the
    time against the activity's throttle budget (option ``throttle_budget``, default
    600 s) and its schedule-to-close deadline: past either, the activity fails for good
    with type ``ThrottleBudgetExhausted`` (or ``ScheduleToCloseTimeout``). Nothing sleeps in the
    worker: the delay is a new
    ``available_at``.

    Args:
        delay: seconds from now (negative counts as 0).
        reason: why, shown by ``cairn describe`` ("throttled until ...: reason").
        kind: ``"throttle"``, ``"breaker"`` or ``"rate_limit"``.
    """

    def __init__(self, delay: float, *, reason: str, kind: str = "throttle") -> None:
        if kind not in RESCHEDULE_KINDS:
            raise ValueError(f"Reschedule kind must be one of {', '.join(RESCHEDULE_KINDS)}, not {kind!r}")
        super().__init__(f"{kind}: {reason} (retry in {delay:.3f} s)")
        self.delay = max(float(delay), 0.0)
        self.reason = reason
        self.kind = kind

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ActivityDefinition:
    """A registered activity function."""

    name: str
    fn: Callable[..., Any]
    signature: Signature
    is_async: bool
    breaker: BreakerConfig | None = None  # with its name set: calls go through that breaker


@dataclass
class ActivityInfo:
    """What an attempt knows about itself."""

    activity_type: str
    workflow_id: str
    workflow_type: str
    run_id: str
    seq: int
    attempt: int
    queue: str
    scheduled_at: datetime
    started_at: datetime
    deadline: datetime | None
    heartbeat_details: Any = None
    worker: str = ""  # the identity of the worker running this attempt (its lease owner)
    _beat: Callable[[Any], None] | None = field(default=None, repr=False)
    _cancelled: Callable[[], bool] | None = field(default=None, repr=False)
    # The worker's connection pool, for built-in activities (the LLM chat activity's
    # breakers, rate limits and stream); user code should not rely on it.
    _pool: Any = field(default=None, repr=False)

    @property
    def idempotency_key(self) -> str:
        """``<workflow_id>/<run_id>/<seq>``: the same on every attempt of this activity."""
        return f"{self.workflow_id}/{self.run_id}/{self.seq}"


_current: contextvars.ContextVar[ActivityInfo] = contextvars.ContextVar("cairn_activity")


@overload
def defn(fn: F, /) -> F: ...
@overload
def defn(*, name: str | None = None, breaker: str | BreakerConfig | None = None) -> Callable[[F], F]: ...
def defn(fn: F | None = None, /, *, name: str | None = None,
         breaker: str | BreakerConfig | None = None) -> F | Callable[[F], F]:
    """Marks a function (``async def`` or plain ``def``, run in a thread) as an activity.

    Args:
        name: the activity type name (default: the function's name).
        breaker: a circuit breaker shared by all workers (see :mod:`cairn.breakers`): a
            name (default config) or a :class:`~cairn.breakers.BreakerConfig` with a name.
            Each attempt is admitted first; while the breaker refuses, the attempt is
            rescheduled to when it may admit, without running and without burning an
            attempt; the outcome (failure, success, slow) is recorded after the call.
    """
    config: BreakerConfig | None = None
    if isinstance(breaker, str):
        if not breaker.strip():
            raise ConfigurationError("a breaker name must not be empty")
        config = BreakerConfig(name=breaker)
    elif breaker is not None:
        if breaker.name is None:
            raise ConfigurationError("give the BreakerConfig a name: BreakerConfig(name=..., ...)")
        config = breaker

    def wrap(f: F) -> F:
        f.__cairn_activity__ = ActivityDefinition(  # type: ignore[attr-defined]
            name or f.__name__, f, Signature(f), asyncio.iscoroutinefunction(f), config
        )
        return f

    return wrap(fn) if fn is not None else wrap


def info() -> ActivityInfo:
    """The running attempt's info (attempt number, idempotency key, last heartbeat)."""
    try:
        return _current.get()
    except LookupError:
        raise CairnError("activity.info() works only inside an activity") from None


def heartbeat(details: Any = None) -> None:
    """Reports that the attempt is alive, with optional progress details.

    Heartbeats are batched per worker process; the last details reach the next attempt as
    ``info().heartbeat_details`` if this one fails. Cancellation reaches the attempt through
    the worker's lease renewal: an ``async def`` activity is cancelled where it awaits; a
    plain ``def`` one (a thread cannot be interrupted) gets ``CancelledError`` from its next
    ``heartbeat()``, once, or sees :func:`is_cancelled` turn True.

    Raises:
        asyncio.CancelledError: (threads only) the activity was cancelled.
    """
    i = info()
    if i._beat is not None:
        i._beat(to_payload(details))


def is_cancelled() -> bool:
    """Whether the workflow cancelled this activity (or the attempt was superseded), as
    learned at the last lease renewal: check it to stop cleanly without waiting for
    :func:`heartbeat` to raise."""
    i = info()
    return i._cancelled is not None and i._cancelled()
