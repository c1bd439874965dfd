"""Payloads: how Python values become the JSON recorded in history, and JSON becomes typed
values again.

A payload (workflow inputs and results, signal payloads, query args, activity args and
results, memo) is one jsonb value in a history row. :func:`to_payload` converts a value and
refuses what jsonb cannot hold or what is too big or too deep; :class:`Signature` validates
JSON against a workflow's or activity's annotations with pydantic.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, Never, NoReturn, get_type_hints

from pydantic import PydanticUndefinedAnnotation, PydanticUserError, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from cairn.errors import ConfigurationError, InputValidationError
from cairn.options import text_bytes

__all__ = [
    "MAX_MEMO_BYTES", "MAX_PAYLOAD_BYTES", "MAX_PAYLOAD_DEPTH", "NEVER_RETURNS", "WARN_PAYLOAD_BYTES", "Signature",
    "check_memo", "to_payload",
]

# The payload warnings keep the logger name they have always had (logging set-ups filter on it).
log = logging.getLogger("cairn.limits")

# Payload limits (workflow inputs and results, signal payloads, query args, activity args
# and results, memo). A payload is one jsonb value in a history row: Postgres takes up to
# 255 MB, but every replay reads the whole history, so big payloads belong in a blob store
# with a reference in the payload. Override with the environment variables of the same names.
MAX_PAYLOAD_BYTES = int(os.environ.get("CAIRN_MAX_PAYLOAD_BYTES", 2 * 1024 * 1024))
WARN_PAYLOAD_BYTES = int(os.environ.get("CAIRN_WARN_PAYLOAD_BYTES", 256 * 1024))
MAX_PAYLOAD_DEPTH = int(os.environ.get("CAIRN_MAX_PAYLOAD_DEPTH", 64))
MAX_MEMO_BYTES = 64 * 1024


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


def check_memo(memo: Any) -> dict[str, Any] | None:
    """Validates a memo (a JSON object, at most ``MAX_MEMO_BYTES``) and returns its JSON form.

    Raises:
        InputValidationError: not a JSON object, or too large.
    """
    if memo is None:
        return None
    if not isinstance(memo, Mapping):
        raise InputValidationError("the memo must be a JSON object")
    payload = to_payload(dict(memo))  # raises InputValidationError for what JSON cannot hold
    if len(json.dumps(payload)) > MAX_MEMO_BYTES:
        raise InputValidationError(f"the memo is larger than {MAX_MEMO_BYTES} bytes")
    return payload  # type: ignore[no-any-return]


def _check_storable(data: Any, depth: int) -> int:
    """Checks that jsonb can store ``data``; returns about how many bytes it takes as JSON."""
    if isinstance(data, str):
        return text_bytes(data, "a string in the payload") + 2
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
                size += text_bytes(key, "a key in the payload") + 4 + _check_storable(item, depth + 1)
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
    raises on it. ``method=True`` reads a method taken from its class, without its
    ``self``; a bound method needs no flag.
    """

    def __init__(self, fn: Callable[..., Any], *, method: bool = False) -> None:
        sig = inspect.signature(fn)
        if method:  # a method taken from its class: the first parameter is the instance
            sig = sig.replace(parameters=list(sig.parameters.values())[1:])
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
