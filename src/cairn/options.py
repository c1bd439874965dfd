"""Options shared by workflows, activities and the client: retry policy, payload codec."""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cache
from typing import Any, Literal, Never, NoReturn, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PydanticUndefinedAnnotation,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import to_jsonable_python

from cairn.errors import ConfigurationError, InputValidationError

log = logging.getLogger("cairn.limits")

# Payload limits (workflow inputs and results, signal payloads, query args, activity args
# and results, memo). A payload is one jsonb value in a history row: Postgres takes up to
# 255 MB, but every replay reads the whole history, so big payloads belong in a blob store
# with a reference in the payload. Override with the environment variables of the same names.
MAX_PAYLOAD_BYTES = int(os.environ.get("CAIRN_MAX_PAYLOAD_BYTES", 2 * 1024 * 1024))
WARN_PAYLOAD_BYTES = int(os.environ.get("CAIRN_WARN_PAYLOAD_BYTES", 256 * 1024))
MAX_PAYLOAD_DEPTH = int(os.environ.get("CAIRN_MAX_PAYLOAD_DEPTH", 64))
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


def to_payload(value: Any) -> Any:
    """Turns a Python value (models, dataclasses, datetimes, primitives) into JSON data.

    Raises:
        InputValidationError: the value has no JSON form (NaN and infinities included:
            Postgres' jsonb refuses them), nests deeper than ``MAX_PAYLOAD_DEPTH`` or is
            larger than ``MAX_PAYLOAD_BYTES`` encoded (a warning is logged above
            ``WARN_PAYLOAD_BYTES``).
    """
    try:
        data = to_jsonable_python(value)
    except RecursionError:
        raise InputValidationError(f"the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels") from None
    except Exception as exc:  # pydantic_core raises PydanticSerializationError
        if "depth" in str(exc).lower():
            raise InputValidationError(f"the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels") from None
        raise InputValidationError(f"value of type {type(value).__name__} is not JSON-serialisable: {exc}") from None
    size = _check_storable(data, 0)
    if size > MAX_PAYLOAD_BYTES:
        raise InputValidationError(
            f"the payload is about {size} bytes as JSON, over the limit of {MAX_PAYLOAD_BYTES} "
            "(CAIRN_MAX_PAYLOAD_BYTES): store large data elsewhere and pass a reference")
    if size > WARN_PAYLOAD_BYTES:
        log.warning("a payload of about %d bytes (warning above %d, limit %d): every replay reads it",
                    size, WARN_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES)
    return data


def check_text(text: str, what: str) -> str:
    """Refuses text that Postgres cannot store: NUL characters and lone surrogates."""
    _text_bytes(text, what)
    return text


def _text_bytes(text: str, what: str) -> int:
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


def _check_storable(data: Any, depth: int) -> int:
    """Checks that jsonb can store ``data``; returns about how many bytes it takes as JSON."""
    if isinstance(data, str):
        return _text_bytes(data, "a string in the payload") + 2
    if isinstance(data, float):
        if not math.isfinite(data):
            raise InputValidationError(f"{data} cannot be stored as JSON: use a finite number or null")
        return 24
    if isinstance(data, dict | list):
        if depth >= MAX_PAYLOAD_DEPTH:
            raise InputValidationError(f"the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels "
                                       "(CAIRN_MAX_PAYLOAD_DEPTH)")
        size = 2
        if isinstance(data, dict):
            for key, item in data.items():
                size += _text_bytes(key, "a key in the payload") + 4 + _check_storable(item, depth + 1)
        else:
            for item in data:
                size += 1 + _check_storable(item, depth + 1)
        return size
    return 8  # numbers, booleans, null


class Signature:
    """The typed parameters and return type of a workflow or activity function.

    Inputs are recorded as a JSON list, one entry per positional parameter, and validated
    with pydantic against the annotations on the way in. A ``NoReturn`` or ``Never``
    return type (the function only raises or continues as new) has no result schema.
    Building one never fails at import: an annotation pydantic cannot validate is kept in
    :attr:`problems`, and :meth:`check` (the worker's registration, every validation)
    raises on it.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        sig = inspect.signature(fn)
        try:
            hints = get_type_hints(fn)
        except Exception:  # unresolvable forward references: fall back to no validation
            hints = {}
        self._what = fn.__qualname__
        self.names: list[str] = []
        self.adapters: list[TypeAdapter[Any]] = []
        self.problems: list[str] = []
        self.required = 0
        for param in sig.parameters.values():
            if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                raise TypeError(f"{fn.__qualname__}: only positional parameters are supported, not {param.name!r}")
            self.names.append(param.name)
            self.adapters.append(self._adapter(hints.get(param.name, Any), f"parameter {param.name!r}"))
            if param.default is param.empty:
                self.required += 1
        returns = hints.get("return", Any)
        # None: the function never returns normally, so there is no result to validate.
        self.returns: TypeAdapter[Any] | None = (
            None if any(returns is t for t in NEVER_RETURNS) else self._adapter(returns, "the return type"))

    def _adapter(self, tp: Any, what: str) -> TypeAdapter[Any]:
        try:
            return _adapter(tp)
        except (PydanticUserError, PydanticUndefinedAnnotation) as exc:
            reason = str(exc).splitlines()[0]
            self.problems.append(f"{what} is annotated {getattr(tp, '__qualname__', repr(tp))}, which cannot be "
                                 f"validated ({reason}): use a JSON type, a dataclass or a pydantic model")
            return _adapter(Any)

    def check(self, what: str) -> None:
        """Raises if an annotation cannot be validated (see :attr:`problems`).

        Raises:
            ConfigurationError: naming ``what``, the function and each bad annotation.
        """
        if self.problems:
            raise ConfigurationError(f"{what} ({self._what}): {'; '.join(self.problems)}")

    def validate_args(self, args: Sequence[Any], what: str) -> list[Any]:
        """Validates JSON (or Python) arguments into the annotated types."""
        self.check(what)
        if not self.required <= len(args) <= len(self.adapters):
            want = (str(self.required) if self.required == len(self.adapters)
                    else f"{self.required} to {len(self.adapters)}")
            raise InputValidationError(f"{what} takes {want} argument(s), got {len(args)}")
        out = []
        problems = []  # every invalid argument is reported, not only the first
        for name, adapter, arg in zip(self.names, self.adapters, args, strict=False):
            try:
                out.append(adapter.validate_python(arg))
            except ValidationError as exc:
                problems.append(f"argument {name!r} is invalid: {_brief(exc)}")
        if problems:
            raise InputValidationError(f"{what}: {'; '.join(problems)}")
        return out

    def validate_result(self, data: Any, what: str) -> Any:
        """Validates a result into the return type (as it is, for a ``NoReturn`` function)."""
        self.check(what)
        if self.returns is None:
            return data
        try:
            return self.returns.validate_python(data)
        except ValidationError as exc:
            raise InputValidationError(f"{what}: result is invalid: {_brief(exc)}") from None

    def json_schema(self) -> dict[str, Any]:
        """A JSON schema of the argument list, stored in the type registry for the CLI."""
        items = []
        for adapter in self.adapters:
            try:
                items.append(adapter.json_schema())
            except Exception:  # types with no JSON schema accept anything
                items.append({})
        return {"type": "array", "prefixItems": items, "minItems": self.required, "maxItems": len(items)}


# Return annotations of a function that never returns normally (it raises or continues as new).
NEVER_RETURNS: tuple[Any, ...] = (NoReturn, Never)


@cache
def _adapter_cached(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _adapter(tp: Any) -> TypeAdapter[Any]:
    try:
        return _adapter_cached(tp)
    except TypeError:  # unhashable annotation
        return TypeAdapter(tp)


def _brief(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def seconds(value: timedelta | float | None) -> float | None:
    """A timeout option as seconds (``timedelta`` or a number of seconds)."""
    if value is None:
        return None
    out = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not 0 < out < math.inf:  # NaN fails both comparisons
        raise InputValidationError(f"timeouts must be positive and finite, got {value!r}")
    return out


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
