"""Circuit breakers shared by every worker through Postgres.

A breaker guards calls to one dependency (LLM breakers are named
``provider:model:endpoint``; any activity may name one with
``@activity.defn(breaker="payments")``). Its state lives in one ``cairn.breakers`` row:

* ``closed``: calls are admitted; outcomes go into a sliding window (the last N calls, or
  the last N seconds in buckets). Once the window holds ``minimum_calls`` calls and the
  failure rate or the slow-call rate reaches its threshold, it opens.
* ``open``: calls are refused until ``open_until`` (``recovery_timeout``, multiplied by
  ``recovery_multiplier`` on each consecutive re-open, up to ``max_recovery_timeout``; a
  close resets it; ``trip`` opens it until a given time, e.g. a 429's Retry-After).
* ``half_open``: at most ``permitted_calls_in_half_open`` probes cluster-wide, each under a
  probe lease that expires (a crashed prober frees its slot). The round is judged like the
  closed window, by the failure rate: it re-opens as soon as the failed (or slow) probes
  reach ``failure_rate_threshold`` of ``permitted_calls_in_half_open``, and closes once
  all of them are in below it (1 failure of the default 3 probes closes it).
* ``forced_open``: refused until an operator closes it (quota exhausted: ``trip(forced=True)``).
* ``disabled``: every call admitted, nothing recorded.

``generation`` is bumped on every transition. An admission carries the generation it was
admitted under, and an outcome from another generation changes no state: a call admitted
before the breaker opened cannot re-open it, and one admitted before a re-open cannot
close it.

Every transition is a read-modify-write of the breaker's row under its row lock
(``cairn.store.breakers.locked``, ``SELECT ... FOR UPDATE``), so workers take turns instead
of racing. The common path (a closed breaker admitting) is one statement and takes no lock.
Time comes from the database; tests pin it with ``now=``.

The config is stored with the row on first use and the first writer wins: every worker
then applies the same thresholds even during a rolling deploy. To change a breaker's
config, ``cairn breakers reset NAME`` drops the row (the next call recreates it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from cairn.errors import BreakerNotFound, InputValidationError
from cairn.options import BreakerConfig  # the config model lives with the other options; public here
from cairn.store import breakers as store
from cairn.telemetry import meter

if TYPE_CHECKING:
    from cairn.store.db import AnyPool, Conn

__all__ = [
    "STATES",
    "Admission",
    "BreakerConfig",
    "BreakerNotFound",
    "admit",
    "close",
    "describe",
    "disable",
    "enable",
    "force_open",
    "hold_probe",
    "record",
    "refusing_for",
    "release",
    "renew_probe",
    "reset",
    "trip",
]

STATES = ("closed", "open", "half_open", "forced_open", "disabled")
STATE_CODES = {s: i for i, s in enumerate(STATES)}  # the state gauge's values
TIME_BUCKETS = 60  # a time window is cut into at most this many buckets (of at least 1 s)
HALF_OPEN_RECHECK_SECONDS = 5.0  # a call refused while every probe slot is taken looks again after this

log = logging.getLogger("cairn.breakers")


@dataclass(frozen=True)
class Admission:
    """Whether a call may go ahead.

    Attributes:
        permitted: the call may be made.
        retry_at: when not permitted, when the breaker may admit (database time).
        generation: the generation admitted under; pass the admission back to :func:`record`.
        probe_id: set for a half-open probe (its lease).
        state: the breaker's state when it decided.
        name: the breaker's name.
        now: the database time of the decision.
    """

    permitted: bool
    retry_at: datetime | None
    generation: int
    probe_id: str | None
    state: str
    name: str = ""
    now: datetime | None = None

    @property
    def delay(self) -> float:
        """Seconds from the decision to ``retry_at`` (0 when permitted)."""
        if self.retry_at is None or self.now is None:
            return 0.0
        return max((self.retry_at - self.now).total_seconds(), 0.0)


# ---------------------------------------------------------------- telemetry

_calls = meter.create_counter("cairn.breaker.calls", description="Calls through circuit breakers, by outcome")
_transitions = meter.create_counter("cairn.breaker.transitions", description="Circuit breaker state transitions")
_last_state: dict[str, int] = {}  # the last state this process saw, per breaker


def _observe_states(_options: CallbackOptions) -> list[Observation]:
    return [Observation(code, {"breaker": name}) for name, code in list(_last_state.items())]


meter.create_observable_gauge("cairn.breaker.state", [_observe_states],
                              description="Breaker state as last seen by this process: " +
                              ", ".join(f"{i}={s}" for i, s in enumerate(STATES)))


def _count(name: str, outcome: str) -> None:
    _calls.add(1, {"breaker": name, "outcome": outcome})


# ---------------------------------------------------------------- window math (pure)


def window_add(config: BreakerConfig, window: dict[str, Any], at: float, *, failed: bool, slow: bool) -> dict[str, Any]:
    """The window with one more outcome at epoch time ``at``.

    A count window is a ring of the last ``window_size`` outcome codes (bit 0: failed,
    bit 1: slow). A time window is a list of ``[bucket_start, calls, failures, slow]``
    buckets; buckets older than the window are dropped.
    """
    code = int(failed) | (int(slow) << 1)
    if config.window == "count":
        ring = list(window.get("ring", []))
        pos = int(window.get("pos", 0))
        if len(ring) < config.window_size:
            ring.append(code)
        else:
            ring[pos % config.window_size] = code
        return {"ring": ring, "pos": (pos + 1) % config.window_size}
    width = _bucket_width(config)
    start = math.floor(at / width) * width
    buckets = [b for b in window.get("buckets", []) if b[0] > at - config.window_size - width]
    if buckets and buckets[-1][0] == start:
        b = buckets[-1]
        buckets[-1] = [b[0], b[1] + 1, b[2] + int(failed), b[3] + int(slow)]
    else:
        buckets.append([start, 1, int(failed), int(slow)])
    return {"buckets": buckets}


def window_stats(config: BreakerConfig, window: dict[str, Any], at: float) -> tuple[int, int, int]:
    """(calls, failures, slow calls) in the window at epoch time ``at``.

    A time bucket counts while its start lies within the last ``window_size`` seconds, so
    the window is exact to one bucket width.
    """
    if config.window == "count":
        ring = window.get("ring", [])
        return len(ring), sum(c & 1 for c in ring), sum((c >> 1) & 1 for c in ring)
    live = [b for b in window.get("buckets", []) if b[0] > at - config.window_size]
    return sum(b[1] for b in live), sum(b[2] for b in live), sum(b[3] for b in live)


def _bucket_width(config: BreakerConfig) -> float:
    return max(1.0, config.window_size / TIME_BUCKETS)


def recovery_seconds(config: BreakerConfig, consecutive_opens: int) -> float:
    """How long the ``consecutive_opens``-th open in a row lasts."""
    try:
        grown = config.recovery_timeout * config.recovery_multiplier ** max(consecutive_opens - 1, 0)
    except OverflowError:
        grown = config.max_recovery_timeout
    return min(grown, config.max_recovery_timeout)


# ---------------------------------------------------------------- the row, under its lock


@dataclass
class _Row:
    name: str
    state: str
    generation: int
    config: BreakerConfig
    window: dict[str, Any]
    opened_at: datetime | None
    open_until: datetime | None
    consecutive_opens: int
    half_open_successes: int
    now: datetime
    counts: dict[str, int]
    events: list[tuple[str, str, str]]
    resume_to: str | None = None  # a throttle-open: the state it resumes once it ends

    @classmethod
    def of(cls, r: store.BreakerRow) -> _Row:
        c = r.current
        return cls(r.name, c.state, c.generation, BreakerConfig.model_validate(r.config), dict(c.window),
                   c.opened_at, c.open_until, c.consecutive_opens, c.half_open_successes, r.now,
                   {"successful": 0, "failed": 0, "slow": 0, "not_permitted": 0}, [], c.resume_to)

    def state_now(self) -> store.BreakerState:
        """The state as the store writes it back."""
        return store.BreakerState(self.state, self.generation, self.window, self.opened_at, self.open_until,
                                  self.consecutive_opens, self.half_open_successes, self.resume_to)

    def move(self, to: str, reason: str, *, keep_window: bool = False) -> None:
        """A transition: new generation, fresh window (unless kept), an event."""
        self.events.append((self.state, to, reason))
        self.state = to
        self.generation += 1
        self.resume_to = None
        if not keep_window:
            self.window = {}
        self.half_open_successes = 0

    @property
    def half_open_failures(self) -> int:
        """Failed (or slow) probes of this half-open round, kept in the window, which a
        half-open breaker does not otherwise use (a transition empties it)."""
        return int(self.window.get("probe_failures", 0))

    def open(self, reason: str, until: datetime | None = None) -> None:
        self.consecutive_opens += 1
        self.opened_at = self.now
        self.open_until = until or self.now + timedelta(
            seconds=recovery_seconds(self.config, self.consecutive_opens))
        self.move("open", reason)

    def close(self, reason: str) -> None:
        self.consecutive_opens = 0
        self.opened_at = self.open_until = None
        self.move("closed", reason)


@contextlib.asynccontextmanager
async def _locked(conn: Conn, name: str, now: datetime | None) -> AsyncIterator[_Row | None]:
    """The breaker's row under its lock, for the transaction of the block."""
    async with store.locked(conn, name, now) as r:
        yield None if r is None else _Row.of(r)


async def _write(conn: Conn, row: _Row, now: datetime | None) -> None:
    await store.write(conn, row.name, row.state_now(), store.Counters(**row.counts), row.events, now)
    for frm, to, _ in row.events:
        _transitions.add(1, {"breaker": row.name, "from": frm, "to": to})
    _last_state[row.name] = STATE_CODES[row.state]


# ---------------------------------------------------------------- calls


async def admit(conn: Conn, name: str, config: BreakerConfig, *, now: datetime | None = None) -> Admission:
    """Asks the breaker whether a call may go ahead (creating it on first use).

    Closed and disabled breakers admit with one statement and no lock. An open breaker
    whose recovery time has passed turns half-open here and admits a probe if a slot is
    free. Refused calls are counted (``not_permitted``).

    Args:
        conn: a connection (autocommit, or inside the caller's transaction).
        name: the breaker's name.
        config: its config (stored on first use; an existing breaker keeps its own).
        now: the time to decide at (tests); default the database's clock.
    """
    if not name.strip():
        raise InputValidationError("a breaker name must not be empty")
    r = await store.read(conn, name, config.stored(), now)
    state, gen, open_until = r.current.state, r.current.generation, r.current.open_until
    _last_state[name] = STATE_CODES[state]
    if state in ("closed", "disabled"):
        return Admission(True, None, gen, None, state, name, r.now)
    if state == "forced_open" or (state == "open" and open_until is not None and r.now < open_until):
        await store.count_not_permitted(conn, name)
        _count(name, "not_permitted")
        return Admission(False, _refused_until(state, open_until, r.now, config), gen, None, state, name, r.now)
    async with _locked(conn, name, now) as row:
        assert row is not None  # breakers are deleted only by `cairn breakers reset`
        admission = await _admit_locked(conn, row, now)
        await _write(conn, row, now)
    _count(name, "permitted" if admission.permitted else "not_permitted")
    return admission


def _refused_until(state: str, open_until: datetime | None, now: datetime, config: BreakerConfig) -> datetime:
    if state == "open" and open_until is not None and open_until > now:
        return open_until
    # forced open: nothing says when; look again after a recovery timeout
    return now + timedelta(seconds=config.recovery_timeout)


async def _admit_locked(conn: Conn, row: _Row, now: datetime | None) -> Admission:
    """The admission decision for a breaker that is (or may turn) half-open."""
    if row.state in ("closed", "disabled"):
        return Admission(True, None, row.generation, None, row.state, row.name, row.now)
    if row.state == "open" and (row.open_until is None or row.now >= row.open_until):
        if row.resume_to == "closed":
            # A throttle-open ends where it began: the model never failed.
            row.opened_at = row.open_until = None
            row.move("closed", "retry-after elapsed", keep_window=True)
            return Admission(True, None, row.generation, None, row.state, row.name, row.now)
        row.move("half_open", "retry-after elapsed" if row.resume_to else "recovery timeout elapsed")
    if row.state != "half_open":
        row.counts["not_permitted"] += 1
        return Admission(False, _refused_until(row.state, row.open_until, row.now, row.config), row.generation,
                         None, row.state, row.name, row.now)
    probes = await store.live_probes(conn, row.name, row.generation, now)
    if probes.live + row.half_open_successes + row.half_open_failures < row.config.permitted_calls_in_half_open:
        probe_id = str(uuid.uuid4())
        await store.take_probe(conn, row.name, probe_id, row.generation, row.config.probe_lease_seconds, now)
        return Admission(True, None, row.generation, probe_id, "half_open", row.name, row.now)
    row.counts["not_permitted"] += 1
    # Every slot is taken: look again soon, as the probes' outcomes may close it any moment
    # (waiting a whole recovery_timeout kept calls out for 30 s of a breaker closed 0.6 s
    # after they were refused), or when the first lease would expire, if sooner.
    retry = row.now + timedelta(seconds=min(row.config.recovery_timeout, HALF_OPEN_RECHECK_SECONDS))
    if probes.first_expiry is not None:
        retry = min(retry, probes.first_expiry)
    return Admission(False, retry, row.generation, None, "half_open", row.name, row.now)


async def record(conn: Conn, name: str, admission: Admission, *, success: bool, duration: float | None = None,
                 slow: bool = False, now: datetime | None = None) -> None:
    """Records the outcome of an admitted call.

    An outcome whose generation is not the breaker's current one is stale: it is counted
    but changes no state (neither closes nor re-opens it). A half-open probe's lease is
    released. Nothing is recorded for a disabled breaker.

    Args:
        conn: a connection.
        name: the breaker's name.
        admission: what :func:`admit` returned for this call.
        success: whether the call succeeded.
        duration: seconds it took; slower than ``slow_call_duration_threshold`` is slow.
        slow: the caller's own verdict (e.g. time to first token over the threshold).
        now: the time to record at (tests).
    """
    if admission.state == "disabled" or not admission.permitted:
        return
    async with _locked(conn, name, now) as row:
        if row is None:
            return
        if row.state == "disabled":
            return
        slow = slow or (duration is not None and duration > row.config.slow_call_duration_threshold)
        row.counts["successful" if success else "failed"] += 1
        row.counts["slow"] += int(slow)
        if admission.probe_id is not None:
            await store.release_probe(conn, name, admission.probe_id)
        if admission.generation == row.generation:
            _apply_outcome(row, success=success, slow=slow)
        await _write(conn, row, now)
    _count(name, "failed" if not success else "successful")
    if slow:
        _count(name, "slow")


def _apply_outcome(row: _Row, *, success: bool, slow: bool) -> None:
    """The state change of one current-generation outcome."""
    cfg = row.config
    if row.state == "closed":
        row.window = window_add(cfg, row.window, row.now.timestamp(), failed=not success, slow=slow)
        calls, failures, slows = window_stats(cfg, row.window, row.now.timestamp())
        if calls < cfg.minimum_calls:
            return
        failure_rate, slow_rate = 100.0 * failures / calls, 100.0 * slows / calls
        if failure_rate >= cfg.failure_rate_threshold:
            row.open(f"failure rate {failure_rate:.1f}% >= {cfg.failure_rate_threshold:g}% over {calls} calls")
        elif slow_rate >= cfg.slow_call_rate_threshold:
            row.open(f"slow-call rate {slow_rate:.1f}% >= {cfg.slow_call_rate_threshold:g}% over {calls} calls")
    elif row.state == "half_open":
        # The round is judged as the closed window is: by the probes' failure rate (a slow
        # probe counts as failed), over permitted_calls_in_half_open probes. It re-opens as
        # soon as their failures reach the threshold, whatever the rest would do.
        if not success or slow:
            row.window = {"probe_failures": row.half_open_failures + 1}
        else:
            row.half_open_successes += 1
        permitted = cfg.permitted_calls_in_half_open
        failure_rate = 100.0 * row.half_open_failures / permitted
        if failure_rate >= cfg.failure_rate_threshold:
            row.open(f"half-open probes failed: {row.half_open_failures} of {permitted} "
                     f"({failure_rate:.0f}% >= {cfg.failure_rate_threshold:g}%)")
        elif row.half_open_successes + row.half_open_failures >= permitted:
            row.close(f"{row.half_open_successes} of {permitted} half-open probes succeeded")


async def refusing_for(conn: Conn, name: str, *, now: datetime | None = None) -> float | None:
    """Seconds (database time) the breaker goes on refusing calls, when it refuses them
    right now (forced open: a recovery timeout); None when it would admit. One read, no
    lock: the last look before a request goes out, for a call admitted a while ago."""
    r = await store.refusing(conn, name, now)
    if r is None:
        return None
    if r.state != "open" or r.open_until is None:  # forced open: look again after the recovery timeout
        return r.recovery_timeout
    return float((r.open_until - r.now).total_seconds())


async def renew_probe(conn: Conn, admission: Admission, lease_seconds: float, *, now: datetime | None = None) -> None:
    """Extends a running probe's lease: a probe holds its slot for the life of its call
    (a slow call must not free it for another prober), and only a crashed prober's lease
    runs out."""
    if admission.probe_id is not None:
        await store.renew_probe(conn, admission.name, admission.probe_id, lease_seconds, now)


@contextlib.asynccontextmanager
async def hold_probe(pool: AnyPool, admission: Admission,
                      config: BreakerConfig) -> AsyncIterator[None]:
    """Renews a half-open probe's lease while its call runs: a probe holds its slot for the
    life of its call, however slow, and only a crashed prober's lease runs out."""
    if admission.probe_id is None:
        yield
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(config.probe_lease_seconds / 3)
            try:
                async with pool.connection() as conn:
                    await renew_probe(conn, admission, config.probe_lease_seconds)
            except Exception as exc:  # the next renewal may get through; the lease is long
                log.warning("breaker %s: probe lease not renewed: %s", admission.name, exc)

    renewer = asyncio.create_task(renew(), name="cairn-probe-lease")
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer


async def release(conn: Conn, admission: Admission) -> None:
    """Frees a probe's lease without an outcome (the call was never really made)."""
    if admission.probe_id is not None:
        await store.release_probe(conn, admission.name, admission.probe_id)


async def trip(conn: Conn, name: str, until: datetime | None = None, *, seconds: float | None = None,
               forced: bool = False, reason: str, config: BreakerConfig | None = None,
               now: datetime | None = None) -> None:
    """Opens a breaker until ``until`` (or for ``seconds`` of database time): a throttle,
    such as a 429's Retry-After. With ``forced`` it is forced open instead (quota
    exhausted: it stays open until an operator closes it).

    A throttle is not a failure of the dependency: it does not count as a consecutive open
    (no escalation of the recovery time), and once it ends the breaker resumes the state
    it had: a closed one closes again (its window kept), a half-open one probes afresh. An
    open breaker's ``open_until`` only ever moves later; a forced-open or disabled breaker
    is left alone by a plain trip. The breaker is created (with ``config``, or the
    defaults) if it does not exist yet.
    """
    if (until is None) == (seconds is None):
        raise InputValidationError("trip takes either until or seconds")
    await admit_row(conn, name, config or BreakerConfig(), now)
    async with _locked(conn, name, now) as row:
        assert row is not None
        if until is None:
            until = row.now + timedelta(seconds=max(seconds or 0.0, 0.0))
        if row.state == "disabled" or (row.state == "forced_open" and not forced):
            return
        if forced:
            if row.state == "forced_open":
                row.open_until = max(until, row.open_until or until)
            else:
                row.consecutive_opens += 1
                row.opened_at, row.open_until = row.now, until
                row.move("forced_open", reason)
        elif row.state == "open":
            row.open_until = max(until, row.open_until or until)
        else:
            resume_to = row.state  # closed or half_open
            row.opened_at, row.open_until = row.now, until
            row.move("open", reason, keep_window=True)
            row.resume_to = resume_to
        await _write(conn, row, now)


async def admit_row(conn: Conn, name: str, config: BreakerConfig, now: datetime | None = None) -> None:
    """Makes sure the breaker's row exists (first writer's config wins)."""
    await store.create(conn, name, config.stored(), now)


# ---------------------------------------------------------------- operators


async def _operate(conn: Conn, name: str, now: datetime | None, change: Callable[[_Row], None]) -> None:
    async with _locked(conn, name, now) as row:
        if row is None:
            raise BreakerNotFound(f"no breaker named {name!r}")
        change(row)
        await _write(conn, row, now)


async def force_open(conn: Conn, name: str, *, until: datetime | None = None, seconds: float | None = None,
                     now: datetime | None = None) -> None:
    """Operator: opens the breaker. With ``until`` (or for ``seconds`` of database time) it
    opens until then (then probes, as after a trip); without, it is forced open until
    :func:`close`.

    Raises:
        BreakerNotFound: no breaker of that name.
    """
    def change(row: _Row) -> None:
        end = until if seconds is None else row.now + timedelta(seconds=seconds)
        if end is None:
            row.opened_at, row.open_until = row.now, None
            row.move("forced_open", "opened by an operator")
        else:
            row.opened_at, row.open_until = row.now, end
            row.move("open", f"opened by an operator until {end.isoformat()}")

    await _operate(conn, name, now, change)


async def close(conn: Conn, name: str, *, now: datetime | None = None) -> None:
    """Operator: closes the breaker (fresh window, recovery timeout back to its base)."""
    await _operate(conn, name, now, lambda row: row.close("closed by an operator"))


async def disable(conn: Conn, name: str, *, now: datetime | None = None) -> None:
    """Operator: disables the breaker (admits everything, records nothing)."""
    def change(row: _Row) -> None:
        row.consecutive_opens = 0
        row.opened_at = row.open_until = None
        row.move("disabled", "disabled by an operator")

    await _operate(conn, name, now, change)


async def enable(conn: Conn, name: str, *, now: datetime | None = None) -> None:
    """Operator: re-enables a disabled breaker, closed."""
    def change(row: _Row) -> None:
        if row.state == "disabled":
            row.close("enabled by an operator")

    await _operate(conn, name, now, change)


async def reset(conn: Conn, name: str) -> None:
    """Operator: forgets the breaker (state, window, counters); the next call recreates it
    with its caller's config. Its transitions stay in ``breaker_events``."""
    if not await store.delete(conn, name):
        raise BreakerNotFound(f"no breaker named {name!r}")


async def describe(conn: Conn, *, events: int = 5, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every breaker: state, generation, rates and calls in its window, open-until,
    consecutive opens, counters, live probes and its last transitions."""
    out = []
    for listed in await store.list_breakers(conn, now):
        r, c = listed.row, listed.row.current
        config = BreakerConfig.model_validate(r.config)
        calls, failures, slows = window_stats(config, c.window, r.now.timestamp())
        transitions = await store.recent_events(conn, r.name, events)
        out.append({
            "name": r.name, "state": c.state, "generation": c.generation,
            "failure_rate": round(100.0 * failures / calls, 1) if calls else None,
            "slow_rate": round(100.0 * slows / calls, 1) if calls else None,
            "calls_in_window": calls, "open_until": c.open_until, "consecutive_opens": c.consecutive_opens,
            "live_probes": listed.live_probes, "counters": r.counters._asdict(),
            "config": r.config, "transitions": [t._asdict() for t in transitions],
        })
    return out
