"""Options shared by workflows, activities and the client: the retry policy, durations,
run ids, identifier checks (workflow ids, namespaces, queues), the run-lifecycle options
and the circuit breaker's config. Pure values and checks: no I/O.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
import uuid
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cairn.errors import InputValidationError

MAX_ID_LENGTH = 1000
MAX_NAME_LENGTH = 200  # namespaces and queue names
SHOWN_CHARACTERS = 80  # of user text quoted in an error message (see shown)


class RetryPolicy(BaseModel):
    """How an activity is retried: exponential backoff with jitter, bounded attempts.

    The delay before attempt ``n + 1`` is ``initial_interval * backoff_coefficient ** (n - 1)``
    capped at ``maximum_interval``, then spread by ``± jitter`` (a fraction). A delay is a new
    ``available_at`` on the task, never a sleeping worker.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = Field(default=2.0, ge=1.0)
    maximum_interval: timedelta | None = None  # None: 100 x initial_interval, as Temporal
    maximum_attempts: int = Field(default=0, ge=0)  # 0: unlimited
    non_retryable_error_types: tuple[str, ...] = ()
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)
    # What happens when the attempts (maximum_attempts) or the throttle budget run out:
    # "fail" the activity (ActivityFailed reaches the workflow), or "pause" it: it waits,
    # with its last failure, until an operator resumes it with a fresh set of attempts
    # (`cairn activity unpause`) or fails it (`cairn activity fail`). A non-retryable error
    # and the schedule-to-close timeout still fail it.
    on_exhausted: Literal["fail", "pause"] = "fail"

    @model_validator(mode="after")
    def _check_intervals(self) -> RetryPolicy:
        if self.initial_interval <= timedelta(0):
            raise ValueError("initial_interval must be positive")
        if self.maximum_interval is not None and self.maximum_interval < self.initial_interval:
            raise ValueError("maximum_interval must be at least initial_interval")
        return self

    def next_delay(
        self, attempt: int, error_type: str, *, non_retryable: bool = False, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when retrying must stop.

        Args:
            attempt: the number of the attempt that just failed (1 for the first).
            error_type: the failed attempt's error type name.
            non_retryable: the error said it must not be retried.
            rng: random source for the jitter (tests pass a seeded one).
        """
        if non_retryable or error_type in self.non_retryable_error_types:
            return None
        if self.maximum_attempts and attempt >= self.maximum_attempts:
            return None
        initial = self.initial_interval.total_seconds()
        cap = (self.maximum_interval.total_seconds() if self.maximum_interval else initial * 100)
        try:
            delay = min(initial * self.backoff_coefficient ** (attempt - 1), cap)
        except OverflowError:  # thousands of attempts: long past the cap
            delay = cap
        if self.jitter:
            delay *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(delay, 0.0)


DEFAULT_RETRY_POLICY = RetryPolicy()


_last_run_id = 0
_run_id_lock = threading.Lock()


def new_run_id() -> str:
    """A time-ordered UUID (version 7), so runs sort and index by creation time.

    Monotonic within a process (RFC 9562, method 2): an id made in the same millisecond as
    the last one is that one plus one, so a process's runs list in the order it made them
    (`cairn list` pages by run id); across processes the order is the millisecond's.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    global _last_run_id
    with _run_id_lock:
        # The same millisecond as the last (or the clock stepped back): count on from the last,
        # rather than draw, so a millisecond's ids stay far from the top of their random bits.
        if value >> 80 <= _last_run_id >> 80:
            value = _last_run_id + 1
            if value >> 62 & 0b11 != 0b10:  # the 62-bit counter wrapped into the variant: carry on
                value = ((value >> 64) + 1) << 64 | 0b10 << 62
        _last_run_id = value
    return str(uuid.UUID(int=value))


def check_text(text: str, what: str) -> str:
    """Refuses text that Postgres cannot store: NUL characters and lone surrogates."""
    text_bytes(text, what)
    return text


def text_bytes(text: str, what: str) -> int:
    """The size of ``text`` in UTF-8, refusing what Postgres cannot store (as :func:`check_text`)."""
    if "\x00" in text:
        raise InputValidationError(f"{what} contains a NUL character, which Postgres cannot store")
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputValidationError(f"{what} is not valid Unicode (it has a lone surrogate)") from None


# C0 and C1 control characters (and DEL): invisible in listings and logs, and a way to
# forge log lines (a newline in an id), so identifiers refuse them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_identifier(text: Any, what: str, *, max_length: int = MAX_ID_LENGTH, lookup: bool = False) -> str:
    """A workflow id (or another identifier): non-blank text of at most ``max_length``
    characters, with no control characters and nothing Postgres cannot store.

    ``lookup``: the identifier names something that exists, so control characters are let
    through (a run stored before ids refused them can still be found); NUL and lone
    surrogates, which no stored row can hold, are still refused.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputValidationError(f"{what} must be a non-empty string")
    if len(text) > max_length:
        raise InputValidationError(f"{what} {shown(text)} is longer than {max_length} characters")
    bad = None if lookup else _CONTROL.search(text)
    if bad:
        raise InputValidationError(
            f"{what} contains the control character U+{ord(bad.group()):04X} at position {bad.start()}")
    return check_text(text, what)


def check_namespace(namespace: Any) -> str:
    """A namespace: an identifier of at most ``MAX_NAME_LENGTH`` characters."""
    return check_identifier(namespace, "the namespace", max_length=MAX_NAME_LENGTH)


def check_queue(queue: Any) -> str:
    """A queue name: an identifier of at most ``MAX_NAME_LENGTH`` characters, no surrounding blanks."""
    name = check_identifier(queue, "the queue name", max_length=MAX_NAME_LENGTH)
    if name != name.strip():
        raise InputValidationError(f"the queue name {shown(name)} has leading or trailing blanks")
    return name


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """User text quoted for an error message: ``repr`` (controls escaped), cut after
    ``limit`` characters with the full length said, so a huge id does not flood the terminal."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} chars)"


def seconds(value: timedelta | float | None) -> float | None:
    """A timeout option as seconds (``timedelta`` or a number of seconds)."""
    if value is None:
        return None
    out = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not 0 < out < math.inf:  # NaN fails both comparisons
        raise InputValidationError(f"timeouts must be positive and finite, got {value!r}")
    return out


MAX_START_DELAY_SECONDS = 10 * 365 * 86400.0  # a start delay longer than ten years is a mistake


def check_start_delay(value: timedelta | float | None) -> float | None:
    """A start delay in seconds (None or zero: none), checked: not negative, finite."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise InputValidationError(f"start_delay must be seconds or a timedelta, not {value!r}")
    out = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not 0 <= out <= MAX_START_DELAY_SECONDS:  # NaN fails both comparisons
        raise InputValidationError(f"start_delay must be from 0 to {MAX_START_DELAY_SECONDS:.0f} seconds, "
                                   f"got {value!r}")
    return out or None


# ---------------------------------------------------------------- run lifecycle options

IdReusePolicy = Literal["allow_duplicate", "allow_duplicate_failed_only", "reject_duplicate"]
ParentClosePolicy = Literal["terminate", "request_cancel", "abandon"]
ID_REUSE_POLICIES: tuple[str, ...] = ("allow_duplicate", "allow_duplicate_failed_only", "reject_duplicate")
PARENT_CLOSE_POLICIES: tuple[str, ...] = ("terminate", "request_cancel", "abandon")
RUN_STATUSES: tuple[str, ...] = (
    "running", "completed", "failed", "cancelled", "terminated", "continued_as_new", "timed_out",
)

# The longest execution timeout accepted (about 100 years): beyond, timestamps overflow.
MAX_EXECUTION_TIMEOUT_SECONDS = 100 * 365 * 86400.0


def check_execution_timeout(value: float | None) -> float | None:
    """Validates an execution timeout in seconds (already converted by :func:`seconds`)."""
    if value is not None and not 0 < value <= MAX_EXECUTION_TIMEOUT_SECONDS:
        raise InputValidationError(f"execution_timeout must be positive and at most "
                                   f"{MAX_EXECUTION_TIMEOUT_SECONDS:.0f} seconds; got {value!r}")
    return value


def check_policy(value: Any, allowed: tuple[str, ...], what: str) -> str:
    """Validates a policy name (``InputValidationError`` naming the choices)."""
    if value not in allowed:
        raise InputValidationError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


# ---------------------------------------------------------------- circuit breakers


class BreakerConfig(BaseModel):
    """How a breaker decides. Rates are percentages (0-100); durations are seconds.

    Attributes:
        name: the breaker's name, when the config is given to ``@activity.defn(breaker=...)``.
        window: ``"count"`` (the last ``window_size`` calls) or ``"time"`` (the calls of
            the last ``window_size`` seconds, counted in buckets of ``window_size / 60``
            seconds, at least 1 s).
        minimum_calls: no opening before the window holds this many calls.
        slow_call_duration_threshold: a call slower than this is slow (LLM: time to first token).
        probe_lease_seconds: a half-open probe's slot is freed after this if no outcome comes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    window: Literal["count", "time"] = "count"
    # A window of 100 calls and at least 50 before judging: a flaky model failing 30 % of
    # calls at random must not open it (a 20-call window at 50 % opens within a few hundred
    # such calls: ~5 % of 20-call windows hold 10 failures), a dead one still does.
    window_size: int = Field(default=100, ge=1, le=100_000)
    failure_rate_threshold: float = Field(default=50.0, gt=0, le=100)
    minimum_calls: int = Field(default=50, ge=1)
    slow_call_duration_threshold: float = Field(default=60.0, gt=0)
    slow_call_rate_threshold: float = Field(default=100.0, gt=0, le=100)
    recovery_timeout: float = Field(default=30.0, gt=0)
    recovery_multiplier: float = Field(default=2.0, ge=1)
    max_recovery_timeout: float = Field(default=600.0, gt=0)
    permitted_calls_in_half_open: int = Field(default=3, ge=1)
    probe_lease_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> BreakerConfig:
        if self.max_recovery_timeout < self.recovery_timeout:
            raise ValueError("max_recovery_timeout must be at least recovery_timeout")
        if self.name is not None and not self.name.strip():
            raise ValueError("a breaker name must not be empty")
        return self

    def stored(self) -> dict[str, Any]:
        """The config as stored with the breaker's row (without the name)."""
        return self.model_dump(mode="json", exclude={"name"})


# ---------------------------------------------------------------- priority, fairness, limits

PRIORITY_LEVELS = 5
DEFAULT_PRIORITY = 3
MAX_FAIRNESS_WEIGHT = 1000.0
MAX_KEY_LENGTH = MAX_NAME_LENGTH  # fairness and concurrency keys


class Priority(BaseModel):
    """Where a run's or an activity's tasks go in their queue (Temporal's ``Priority``).

    ``priority_key``: 1 (first) to 5 (last); unset is 3. ``fairness_key``: tasks of one
    priority level of a queue are claimed in turn by key, in proportion to
    ``fairness_weight`` (default 1.0), so one key's backlog does not starve another's; tasks
    without a key keep their enqueue order. An activity inherits its workflow's priority,
    and a child its parent's, field by field, unless given its own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    priority_key: int | None = None
    fairness_key: str | None = None
    fairness_weight: float | None = None

    def __init__(self, priority_key: int | None = None, fairness_key: str | None = None,
                 fairness_weight: float | None = None) -> None:
        """Checked here: a bad value raises ``InputValidationError`` before anything is written."""
        check_priority_key(priority_key)
        if fairness_key is not None:
            check_key(fairness_key, "fairness_key")
        if fairness_weight is not None:
            check_fairness_weight(fairness_weight)
        super().__init__(priority_key=priority_key, fairness_key=fairness_key,
                         fairness_weight=None if fairness_weight is None else float(fairness_weight))

    def to_json(self) -> dict[str, Any] | None:
        """The fields that are set, or None when none is (histories stay as they were)."""
        out = self.model_dump(exclude_none=True)
        return out or None

    @classmethod
    def from_json(cls, data: Any) -> Priority | None:
        """A stored priority (``to_json``'s), or None."""
        if not isinstance(data, dict) or not data:
            return None
        return cls(data.get("priority_key"), data.get("fairness_key"), data.get("fairness_weight"))

    def inherit(self, parent: Priority | None) -> Priority:
        """This priority with its unset fields taken from ``parent`` (a workflow's, a parent run's)."""
        if parent is None:
            return self
        return Priority(self.priority_key if self.priority_key is not None else parent.priority_key,
                        self.fairness_key if self.fairness_key is not None else parent.fairness_key,
                        self.fairness_weight if self.fairness_weight is not None else parent.fairness_weight)


def check_priority_key(value: Any) -> int | None:
    """A priority level: 1 (first) to 5 (last), or None (the default, 3)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PRIORITY_LEVELS:
        raise InputValidationError(
            f"priority_key must be an integer from 1 (first) to {PRIORITY_LEVELS} (last), got {value!r}")
    return value


def check_fairness_weight(value: Any) -> float:
    """A fairness weight: a finite number above 0, at most ``MAX_FAIRNESS_WEIGHT``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= MAX_FAIRNESS_WEIGHT:
        raise InputValidationError(
            f"fairness_weight must be a number above 0 and at most {MAX_FAIRNESS_WEIGHT:g}, got {value!r}")
    return float(value)


def check_key(value: Any, what: str) -> str:
    """A fairness or concurrency key: an identifier of at most ``MAX_KEY_LENGTH`` characters."""
    return check_identifier(value, what, max_length=MAX_KEY_LENGTH)


def check_limit(value: Any) -> int:
    """A concurrency limit: how many runs (or attempts) of a key may hold a slot at once, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
        raise InputValidationError(f"a concurrency limit must be a whole number, 0 or more, got {value!r}")
    return value


def as_priority(value: Priority | int | None) -> Priority | None:
    """``priority=`` as given: a :class:`Priority`, a bare level (1-5) or None."""
    if value is None or isinstance(value, Priority):
        return value
    return Priority(priority_key=check_priority_key(value))
