"""The authoring API for activities: the functions that do the real side effects.

An activity runs at least once; each result is recorded exactly once. Use
:func:`info` for the attempt number and a stable idempotency key to hand to the systems
you call, and :func:`heartbeat` to report progress from a long attempt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import dataclasses
import functools
import hashlib
import hmac
import inspect
import logging
import math
import random
import struct
import uuid
from collections.abc import Callable, MutableMapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, NoReturn, TypeVar, overload

from cairn.engine.instance import CANCELLATION_TYPES, TRY_CANCEL, ActivityHandle
from cairn.engine.loop import current_instance
from cairn.errors import CairnError, ConfigurationError, InputValidationError, Reschedule
from cairn.options import (
    DEFAULT_RETRY_POLICY,
    BreakerConfig,
    Priority,
    RetryPolicy,
    as_priority,
    check_key,
    seconds,
)
from cairn.payloads import Signature, to_payload

__all__ = ["ActivityDefinition", "ActivityInfo", "CompleteAsync", "Reschedule", "definition_of", "defn", "heartbeat",
           "info", "is_cancelled", "logger", "raise_complete_async"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ActivityDefinition:
    """A registered activity function."""

    name: str
    fn: Callable[..., Any]
    signature: Signature
    is_async: bool
    breaker: BreakerConfig | None = None  # with its name set: calls go through that breaker

    async def call(self, args: list[Any], executor: Executor | None = None) -> Any:
        """Runs the function once: awaited if it is an ``async def``, else in a thread of
        ``executor`` (None: the loop's default) with the caller's context variables."""
        if self.is_async:
            return await self.fn(*args)
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor, lambda: ctx.run(self.fn, *args))


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
    # This attempt's task token, for completing it from outside (see raise_complete_async).
    task_token: str = ""
    _beat: Callable[[Any], None] | None = field(default=None, repr=False)
    _cancelled: Callable[[], bool] | None = field(default=None, repr=False)
    # The worker's connection pool, for built-in activities (the LLM chat activity's
    # breakers, rate limits and stream); user code should not rely on it.
    _pool: Any = field(default=None, repr=False)
    # A local activity (workflow.execute_local_activity): ``seq`` is its local seq.
    is_local: bool = False

    @property
    def idempotency_key(self) -> str:
        """``<workflow_id>/<run_id>/<seq>``: the same on every attempt of this activity
        (``<workflow_id>/<run_id>/local/<local seq>`` for a local activity)."""
        if self.is_local:
            return f"{self.workflow_id}/{self.run_id}/local/{self.seq}"
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
            name or f.__name__, f, Signature(f, method=_is_method(f)), asyncio.iscoroutinefunction(f), config
        )
        return f

    return wrap(fn) if fn is not None else wrap


def _is_method(f: Callable[..., Any]) -> bool:
    """A function defined in a class body whose first parameter is ``self``: its workers
    register it bound to an instance (``activities=[my_activities.fetch]``)."""
    owner = f.__qualname__.rpartition(".")[0]
    if not owner or owner.endswith("<locals>"):
        return False
    try:
        params = list(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "self"


def definition_of(obj: Any) -> ActivityDefinition:
    """The definition behind an activity function, or behind a bound method of an instance
    (its calls then go to that instance).

    Raises:
        ConfigurationError: not an ``@activity.defn`` function, or an activity method taken
            from its class rather than from an instance.
    """
    d = getattr(obj, "__cairn_activity__", None)
    if not isinstance(d, ActivityDefinition):
        raise ConfigurationError(f"{obj!r} is not decorated with @activity.defn")
    if inspect.ismethod(obj):
        return dataclasses.replace(d, fn=obj)
    if _is_method(d.fn):
        raise ConfigurationError(f"activity {d.name} is a method: register it bound to an instance "
                                 f"(activities=[instance.{d.fn.__name__}])")
    return d


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
        i._beat(to_payload(details, store=False))


class _ActivityLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds the activity's type, attempt, workflow id and run id to each record logged
    inside an activity (Temporal's ``activity.logger``)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        i = _current.get(None)
        if i is not None:
            extra = dict(kwargs.get("extra") or {})
            extra.update(activity_type=i.activity_type, attempt=i.attempt, workflow_id=i.workflow_id,
                         run_id=i.run_id, workflow_type=i.workflow_type)
            kwargs["extra"] = extra
        return msg, kwargs


logger = _ActivityLogger(logging.getLogger("cairn.activity"), {})
"""A logger for activity code: records carry the activity type, attempt, workflow and run id."""


def is_cancelled() -> bool:
    """Whether the workflow cancelled this activity (or the attempt was superseded), as
    learned at the last lease renewal: check it to stop cleanly without waiting for
    :func:`heartbeat` to raise."""
    i = info()
    return i._cancelled is not None and i._cancelled()


class CompleteAsync(BaseException):
    """Raised by an activity (see :func:`raise_complete_async`) that will be completed from
    outside by its task token. A ``BaseException``, as Temporal's: an ``except Exception``
    in the activity cannot swallow it."""


def raise_complete_async() -> NoReturn:
    """Ends this activity function without completing the activity: the attempt stays open
    until an outside system that holds ``info().task_token`` completes, fails or heartbeats
    it (``Client.complete_activity``, ``fail_activity``, ``heartbeat_activity``, or
    ``cairn activity complete|fail|heartbeat TOKEN``). Its worker may exit meanwhile; the
    start-to-close, heartbeat and schedule-to-close timeouts still apply, and an attempt
    that passes one is retried or failed as any other.

    Raises:
        CompleteAsync: always.
    """
    raise CompleteAsync()


# ---------------------------------------------------------------- task tokens

TASK_TOKEN_PREFIX = "cairn1."
_TOKEN_BODY = struct.Struct(">16siq")  # run id, seq, fencing token
_MAC_BYTES = 16  # HMAC-SHA256, truncated to 128 bits


class TaskToken(NamedTuple):
    """What a task token names: one attempt of one activity, and the MAC that proves it."""

    run_id: str
    seq: int
    token: int
    mac: bytes

    def signed_with(self, key: str) -> bool:
        """Whether the token was made with ``key`` (in constant time)."""
        return hmac.compare_digest(self.mac, _mac(key, self.run_id, self.seq, self.token))


def _mac(key: str, run_id: str, seq: int, token: int) -> bytes:
    body = _TOKEN_BODY.pack(uuid.UUID(run_id).bytes, seq, token)
    return hmac.new(key.encode(), body, hashlib.sha256).digest()[:_MAC_BYTES]


def make_task_token(key: str, run_id: str, seq: int, token: int) -> str:
    """The opaque task token of an attempt: its run id, seq and fencing token, with an
    HMAC under the database's token key (so it cannot be made up), URL-safe base64."""
    body = _TOKEN_BODY.pack(uuid.UUID(run_id).bytes, seq, token)
    raw = body + _mac(key, run_id, seq, token)
    return TASK_TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_task_token(text: str) -> TaskToken:
    """Decodes a task token (its MAC is checked against the database's key later).

    Raises:
        InputValidationError: not a Cairn task token.
    """
    if not isinstance(text, str) or not text.startswith(TASK_TOKEN_PREFIX):
        raise InputValidationError(f"not a Cairn task token (they start with {TASK_TOKEN_PREFIX!r})")
    encoded = text[len(TASK_TOKEN_PREFIX):].strip()
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _TOKEN_BODY.size + _MAC_BYTES:
        raise InputValidationError("not a valid Cairn task token (it is damaged or truncated)")
    run, seq, token = _TOKEN_BODY.unpack(raw[:_TOKEN_BODY.size])
    return TaskToken(str(uuid.UUID(bytes=run)), seq, token, raw[_TOKEN_BODY.size:])


def retry_decision(options: dict[str, Any], attempt: int, failure: dict[str, Any], non_retryable: bool,
                   rng: random.Random) -> tuple[float | None, str]:
    """After attempt ``attempt`` failed with ``failure``: the delay before the next attempt
    (None: no retry) and, without one, the retry state the failure records."""
    policy = RetryPolicy.model_validate(options.get("retry_policy") or {})
    delay = policy.next_delay(attempt, str(failure.get("type")), non_retryable=non_retryable, rng=rng)
    retry_state = "non_retryable" if non_retryable or failure.get("type") in policy.non_retryable_error_types \
        else "maximum_attempts"
    if failure.get("type") == "ScheduleToCloseTimeout":
        delay, retry_state = None, "schedule_to_close_timeout"
    return delay, retry_state


def pauses_when_exhausted(options: dict[str, Any]) -> bool:
    """Whether the activity's retry policy pauses it, rather than fail it, when its attempts
    or its throttle budget run out (``RetryPolicy.on_exhausted``)."""
    return bool((options.get("retry_policy") or {}).get("on_exhausted") == "pause")


# ---------------------------------------------------------------- invocations (for workflow code)


@dataclass(frozen=True)
class ActivityCall:
    """An activity invocation, validated and converted to JSON, ready to schedule."""

    name: str
    args: list[Any]
    options: dict[str, Any]
    queue: str | None
    returns: Callable[[Any], Any] | None
    cancellation_type: str = TRY_CANCEL

    def start(self, tags: dict[str, Any] | None = None) -> ActivityHandle:
        """Schedules the activity (``tags`` are extra keys of its ``ActivityScheduled`` event)."""
        inst = current_instance()
        options = self.options
        if inst.info.priority is not None:  # the workflow's, for the fields the call left unset
            own = Priority.from_json(options.get("priority")) or Priority()
            options = {**options, "priority": own.inherit(inst.info.priority).to_json()}
        return inst.schedule_activity(self.name, self.args, options, self.queue or inst.info.queue,
                                      self.returns, tags, self.cancellation_type)


@functools.lru_cache(maxsize=256)  # a frozen model dumps the same every time: most code uses a few
def _policy_dump(policy: RetryPolicy) -> dict[str, Any]:
    return policy.model_dump(mode="json", exclude={"on_exhausted"} if policy.on_exhausted == "fail" else None)


def _policy_json(policy: RetryPolicy) -> dict[str, Any]:
    """A retry policy's JSON in ``ActivityScheduled`` (``on_exhausted`` only when it is not
    the default: histories stay as they were); its dump was a tenth of scheduling an
    activity, so it is remembered (a copy each time: the options are the caller's)."""
    return dict(_policy_dump(policy))


def validate_call(
    activity: Callable[..., Any] | str,
    args: tuple[Any, ...],
    *,
    start_to_close_timeout: timedelta | float | None,
    schedule_to_close_timeout: timedelta | float | None,
    heartbeat_timeout: timedelta | float | None,
    retry_policy: RetryPolicy | None,
    queue: str | None,
    cancellation_type: str = TRY_CANCEL,
    throttle_budget: timedelta | float | None = None,
    priority: Priority | int | None = None,
    concurrency_key: str | None = None,
) -> ActivityCall:
    """Validates an activity invocation (see :func:`cairn.workflow.start_activity`) without
    scheduling it.

    Raises:
        InputValidationError: not an activity, bad arguments, or no timeout.
    """
    returns: Callable[[Any], Any] | None = None
    if isinstance(activity, str):
        name = activity
        payloads = [to_payload(a) for a in args]
    else:
        adef = getattr(activity, "__cairn_activity__", None)
        if not isinstance(adef, ActivityDefinition):
            raise InputValidationError(f"{activity!r} is not an activity: decorate it with @activity.defn")
        name = adef.name
        sig = adef.signature
        payloads = [to_payload(a) for a in args]
        sig.validate_args(payloads, f"activity {name}")  # a stored payload's value, by unref

        def returns(data: Any) -> Any:
            return sig.validate_result(data, f"activity {name}")

    if cancellation_type not in CANCELLATION_TYPES:
        raise InputValidationError(
            f"activity {name}: cancellation_type must be one of {', '.join(CANCELLATION_TYPES)}, "
            f"not {cancellation_type!r}"
        )
    if start_to_close_timeout is None and schedule_to_close_timeout is None:
        raise InputValidationError(
            f"activity {name}: set start_to_close_timeout or schedule_to_close_timeout"
        )
    policy = retry_policy or DEFAULT_RETRY_POLICY
    options: dict[str, Any] = {
        "start_to_close_timeout": seconds(start_to_close_timeout),
        "schedule_to_close_timeout": seconds(schedule_to_close_timeout),
        "heartbeat_timeout": seconds(heartbeat_timeout),
        # on_exhausted only when it is not the default: histories stay as they were
        "retry_policy": _policy_json(policy),
    }
    if throttle_budget is not None:  # only when given: histories without it stay as they were
        budget = throttle_budget.total_seconds() if isinstance(throttle_budget, timedelta) else throttle_budget
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget) \
                or budget <= 0:
            raise InputValidationError(
                f"activity {name}: throttle_budget must be a positive number of seconds, got {throttle_budget!r}")
        options["throttle_budget"] = float(budget)
    # Only when given (histories without them stay as they were); the row's place in its
    # queue and its concurrency slot come from them (record_workflow_tasks, 0023).
    place = as_priority(priority)
    if place is not None and place.to_json():
        options["priority"] = place.to_json()
    if concurrency_key is not None:
        options["concurrency_key"] = check_key(concurrency_key, f"activity {name}: concurrency_key")
    return ActivityCall(name, payloads, options, queue, returns, cancellation_type)
