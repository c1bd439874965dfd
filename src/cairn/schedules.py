"""Schedules, as Temporal users know them (``ScheduleSpec``, ``SchedulePolicy``, ``ScheduleState``):
the pure part — the spec's slots in a time zone, jitter, the catch-up window, and what an
overlap policy does with a slot. No I/O: ``store/schedules.py`` acts on what this decides,
``client/schedules.py`` is the API, the workers' maintenance loop fires the slots.

A *slot* is a schedule's nominal time (a cron match or an interval step, in UTC); it is the
identity of the action taken for it (``schedule_actions`` primary key), so a slot is acted
on once whatever the number of workers. Jitter delays the action, never moves the slot.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# cronsim (PyPI, by the author of healthchecks.io) parses and iterates cron expressions,
# time zones and DST included (Debian cron's rules: a skipped local time fires once at the
# gap's end, a repeated one once); well kept, no dependencies, so no hand-written parser here.
from cronsim import CronSim, CronSimError

from cairn.errors import InputValidationError
from cairn.options import Priority, as_priority

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_CATCHUP_WINDOW = timedelta(days=365)  # Temporal's default
MIN_CATCHUP_WINDOW = timedelta(seconds=10)    # Temporal's minimum
MAX_SLOTS_PER_PASS = 100                      # slots one pass acts on (a long outage is caught up in several)
MAX_MISSED_COUNTED = 100_000                  # slots missed during one outage that are counted one by one


class ScheduleOverlapPolicy(enum.StrEnum):
    """What a slot does while an earlier action's run is still open (Temporal's names)."""

    SKIP = "skip"                        # drop the slot
    BUFFER_ONE = "buffer_one"            # start it when the running one closes; at most one waits
    BUFFER_ALL = "buffer_all"            # start each in turn as the running ones close
    CANCEL_OTHER = "cancel_other"        # request cancellation of the running one, start when it closed
    TERMINATE_OTHER = "terminate_other"  # terminate the running one, start at once
    ALLOW_ALL = "allow_all"              # start at once, whatever runs


@dataclass
class ScheduleIntervalSpec:
    """Every ``every`` from the Unix epoch, shifted by ``offset`` (UTC; time zones do not apply)."""

    every: timedelta
    offset: timedelta = timedelta(0)


@dataclass
class ScheduleSpec:
    """When a schedule's slots fall: the union of its cron expressions (5 fields, or 6 with
    seconds last, read in ``time_zone_name``) and its intervals, within [start_at, end_at];
    each action delayed by up to ``jitter`` (the same delay for a slot on every worker)."""

    cron_expressions: Sequence[str] = ()
    intervals: Sequence[ScheduleIntervalSpec] = ()
    time_zone_name: str = "UTC"
    jitter: timedelta = timedelta(0)
    start_at: datetime | None = None
    end_at: datetime | None = None

    def check(self) -> ScheduleSpec:
        """Raises InputValidationError for a spec that cannot be used; returns it."""
        if not self.cron_expressions and not self.intervals:
            raise InputValidationError("a schedule spec needs a cron expression or an interval")
        zone(self.time_zone_name)
        for expr in self.cron_expressions:
            if not isinstance(expr, str):
                raise InputValidationError(f"a cron expression is a string, not {expr!r}")
            try:
                CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
            except CronSimError as exc:
                raise InputValidationError(f"bad cron expression {expr!r}: {exc}") from None
        for iv in self.intervals:
            if not isinstance(iv.every, timedelta) or iv.every < timedelta(seconds=1):
                raise InputValidationError(f"an interval's every must be a timedelta of 1 s or more, not {iv.every!r}")
            if not isinstance(iv.offset, timedelta) or not timedelta(0) <= iv.offset < iv.every:
                raise InputValidationError("an interval's offset must be from 0 to less than its every")
        if not isinstance(self.jitter, timedelta) or self.jitter < timedelta(0):
            raise InputValidationError("jitter must be a timedelta of 0 or more")
        for name in ("start_at", "end_at"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise InputValidationError(f"{name} must be a timezone-aware datetime")
        if self.start_at and self.end_at and self.end_at < self.start_at:
            raise InputValidationError("end_at is before start_at")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"cron_expressions": list(self.cron_expressions),
                "intervals": [{"every": iv.every.total_seconds(), "offset": iv.offset.total_seconds()}
                              for iv in self.intervals],
                "time_zone_name": self.time_zone_name, "jitter": self.jitter.total_seconds(),
                "start_at": self.start_at.isoformat() if self.start_at else None,
                "end_at": self.end_at.isoformat() if self.end_at else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScheduleSpec:
        return cls(cron_expressions=list(d.get("cron_expressions") or ()),
                   intervals=[ScheduleIntervalSpec(timedelta(seconds=i["every"]), timedelta(seconds=i["offset"]))
                              for i in d.get("intervals") or ()],
                   time_zone_name=d.get("time_zone_name") or "UTC", jitter=timedelta(seconds=d.get("jitter") or 0),
                   start_at=_parse_time(d.get("start_at")), end_at=_parse_time(d.get("end_at")))

    def slots(self, after: datetime, until: datetime | None = None) -> Iterator[datetime]:
        """The slots strictly after ``after`` (and at most ``until``), in order, in UTC."""
        lower = after if self.start_at is None else max(after, self.start_at - timedelta(microseconds=1))
        upper = until if self.end_at is None else (self.end_at if until is None else min(until, self.end_at))
        iters = [self._cron(expr, lower) for expr in self.cron_expressions]
        iters += [_interval(iv, lower) for iv in self.intervals]
        heads: list[datetime | None] = [next(it, None) for it in iters]
        last: datetime | None = None
        while True:
            live = [h for h in heads if h is not None]
            if not live:
                return
            t = min(live)
            if upper is not None and t > upper:
                return
            if t != last:  # a time two parts of the spec match is one slot
                yield t
                last = t
            heads = [next(it, None) if h == t else h for it, h in zip(iters, heads, strict=True)]

    def _cron(self, expr: str, after: datetime) -> Iterator[datetime]:
        for t in CronSim(expr, after.astimezone(zone(self.time_zone_name))):
            yield t.astimezone(UTC)

    def next_slots(self, after: datetime, n: int) -> list[datetime]:
        """The first ``n`` slots after ``after``."""
        out: list[datetime] = []
        for t in self.slots(after):
            out.append(t)
            if len(out) >= n:
                break
        return out

    def jitter_of(self, schedule_id: str, slot: datetime) -> timedelta:
        """The slot's jitter: from 0 to less than ``jitter``, the same on every worker."""
        if not self.jitter:
            return timedelta(0)
        digest = hashlib.sha256(f"{schedule_id}\0{slot.isoformat()}".encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        return timedelta(seconds=math.floor(fraction * self.jitter.total_seconds() * 1000) / 1000)


def _interval(iv: ScheduleIntervalSpec, after: datetime) -> Iterator[datetime]:
    every = iv.every
    k = (after - EPOCH - iv.offset) // every + 1
    while True:
        yield EPOCH + iv.offset + k * every
        k += 1


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def zone(name: str) -> ZoneInfo:
    """The time zone ``name`` (IANA), or InputValidationError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputValidationError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Paris')") from None


@dataclass
class SchedulePolicy:
    """How a schedule acts: the overlap policy, and the catch-up window (after downtime,
    slots missed longer ago than this are skipped)."""

    overlap: ScheduleOverlapPolicy = ScheduleOverlapPolicy.SKIP
    catchup_window: timedelta = DEFAULT_CATCHUP_WINDOW

    def check(self) -> SchedulePolicy:
        self.overlap = check_overlap(self.overlap)
        if not isinstance(self.catchup_window, timedelta) or self.catchup_window < MIN_CATCHUP_WINDOW:
            raise InputValidationError(f"catchup_window must be a timedelta of {MIN_CATCHUP_WINDOW} or more")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"overlap": str(self.overlap), "catchup_window": self.catchup_window.total_seconds()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SchedulePolicy:
        return cls(ScheduleOverlapPolicy(d["overlap"]), timedelta(seconds=d["catchup_window"]))


def check_overlap(value: Any) -> ScheduleOverlapPolicy:
    try:
        return ScheduleOverlapPolicy(value)
    except ValueError:
        raise InputValidationError(f"overlap must be one of {', '.join(p.value for p in ScheduleOverlapPolicy)}, "
                                   f"not {value!r}") from None


@dataclass
class ScheduleState:
    """A schedule's state: paused or not, and a note saying why."""

    note: str = ""
    paused: bool = False


@dataclass
class ScheduleActionStartWorkflow:
    """The action: start a run of ``workflow`` (an ``@workflow.defn`` function or a type
    name) with ``args``, as ``<id>-<slot>`` (``id`` defaults to the schedule's id); each run
    with ``priority`` and ``concurrency_key`` as :meth:`cairn.Client.start` takes them."""

    workflow: Any
    args: Sequence[Any] = ()
    id: str | None = None
    queue: str | None = None
    execution_timeout: timedelta | None = None
    memo: dict[str, Any] | None = None
    priority: Priority | None = None
    concurrency_key: str | None = None

    def __init__(self, workflow: Any, *args: Any, id: str | None = None, queue: str | None = None,
                 task_queue: str | None = None, execution_timeout: timedelta | None = None,
                 memo: dict[str, Any] | None = None, priority: Priority | int | None = None,
                 concurrency_key: str | None = None) -> None:
        self.workflow = workflow
        self.args = list(args)
        self.id = id
        self.queue = queue or task_queue
        self.execution_timeout = execution_timeout
        self.memo = memo
        self.priority = as_priority(priority)  # checked here (and the key at create, as a start's)
        self.concurrency_key = concurrency_key


@dataclass
class Schedule:
    """A schedule: what to start, when, how, and its state."""

    action: ScheduleActionStartWorkflow
    spec: ScheduleSpec
    policy: SchedulePolicy = field(default_factory=SchedulePolicy)
    state: ScheduleState = field(default_factory=ScheduleState)


@dataclass
class ScheduleBackfill:
    """Act on the spec's slots in [start_at, end_at] as if they had come, with ``overlap``."""

    start_at: datetime
    end_at: datetime
    overlap: ScheduleOverlapPolicy | None = None


# ---------------------------------------------------------------- deciding


def due_slots(spec: ScheduleSpec, schedule_id: str, processed_until: datetime, now: datetime,
              catchup_window: timedelta, limit: int = MAX_SLOTS_PER_PASS) -> tuple[list[datetime], datetime, int]:
    """The slots to act on now: those after ``processed_until`` whose time (slot + jitter)
    has come, skipping those that came more than ``catchup_window`` ago.

    Returns (slots to act on, the new ``processed_until``, how many were missed).
    """
    oldest = now - catchup_window - spec.jitter  # nothing before this can be within the window
    after = max(processed_until, oldest - timedelta(microseconds=1))
    fire: list[datetime] = []
    missed = 0
    if after > processed_until:  # slots before the window are past (counted up to a cap): start after them
        for _ in spec.slots(processed_until, after):
            missed += 1
            if missed >= MAX_MISSED_COUNTED:
                break
    until = after
    for slot in spec.slots(after, now):
        at = slot + spec.jitter_of(schedule_id, slot)
        if at > now:
            break
        if len(fire) >= limit:
            break
        until = slot
        if now - at > catchup_window:
            missed += 1
        else:
            fire.append(slot)
    return fire, until, missed


def next_check(spec: ScheduleSpec, schedule_id: str, processed_until: datetime) -> datetime | None:
    """When the next slot's action is due (slot + jitter), or None if the spec has no more."""
    for slot in spec.slots(processed_until):
        return slot + spec.jitter_of(schedule_id, slot)
    return None


Decision = Literal["start", "buffer", "skip"]


@dataclass(frozen=True)
class Overlap:
    """What a slot does: start, buffer or skip; and whether the open runs are cancelled or terminated."""

    decision: Decision
    cancel_running: bool = False
    terminate_running: bool = False


def decide(policy: ScheduleOverlapPolicy, running: int, buffered: int) -> Overlap:
    """What a new slot does, given how many of the schedule's runs are open and how many
    actions wait in its buffer (Temporal's overlap semantics)."""
    if policy == ScheduleOverlapPolicy.ALLOW_ALL:
        return Overlap("start")
    if running == 0 and buffered == 0:
        return Overlap("start")
    if policy == ScheduleOverlapPolicy.SKIP:
        return Overlap("skip")
    if policy == ScheduleOverlapPolicy.BUFFER_ONE:
        return Overlap("buffer" if buffered == 0 else "skip")
    if policy == ScheduleOverlapPolicy.BUFFER_ALL:
        return Overlap("buffer")
    if policy == ScheduleOverlapPolicy.CANCEL_OTHER:
        # Cancel what runs and start this one once it closed; at most one waits.
        return Overlap("buffer" if buffered == 0 else "skip", cancel_running=running > 0)
    # TERMINATE_OTHER
    return Overlap("start", terminate_running=running > 0)


def action_workflow_id(prefix: str, slot: datetime) -> str:
    """The run's workflow id for a slot: ``<prefix>-<slot, ISO 8601 UTC>`` (Temporal's form)."""
    return f"{prefix}-{slot.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')}{_fraction(slot)}Z"


def _fraction(slot: datetime) -> str:
    return f".{slot.microsecond:06d}" if slot.microsecond else ""
