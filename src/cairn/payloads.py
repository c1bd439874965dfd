"""Payloads: how Python values become the JSON recorded in history, and JSON becomes typed
values again.

A payload (workflow inputs and results, signal payloads, query args, activity args and
results, memo) is one jsonb value in a history row. :func:`to_payload` converts a value and
refuses what jsonb cannot hold or what is too big or too deep; :class:`Signature` validates
JSON against a workflow's or activity's annotations with pydantic.

The payload store (issue 18, item 2): a payload larger than ``STORE_PAYLOAD_BYTES`` as JSON
is stored once, content-addressed, in ``cairn.payloads`` (``cairn.store.payloads`` writes it
in the transaction of the event that refers to it), and history holds a reference in its
place: ``{"$cairn.payload": "<hash>"}``, the base64url SHA-256 of the payload's canonical
JSON. :func:`to_payload` makes the reference and keeps the compressed bytes in this
process (:func:`made`) until the store writes them. The key is reserved: a reference is a
one-key object whose hash this process made, and any other object with that key is refused
by :func:`to_payload`, so user data can neither forge a reference to someone else's payload
nor be mistaken for one. Small payloads take exactly the old path: one comparison more.
"""

from __future__ import annotations

import base64
import decimal
import hashlib
import inspect
import json
import logging
import math
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Never, NoReturn, get_type_hints

from pydantic import PydanticUndefinedAnnotation, PydanticUserError, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from cairn.errors import ConfigurationError, InputValidationError
from cairn.options import text_bytes

__all__ = [
    "MAX_MEMO_BYTES", "MAX_PAYLOAD_BYTES", "MAX_PAYLOAD_DEPTH", "MAX_STORED_PAYLOAD_BYTES", "NEVER_RETURNS",
    "REF_KEY", "STORE_PAYLOAD_BYTES", "WARN_PAYLOAD_BYTES", "Signature", "check_memo", "decode", "find_refs",
    "jsonb_form", "made", "make_ref", "ref_of", "replace_refs", "to_payload", "unref",
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
# The payload store: a payload larger than this (bytes as JSON) is stored once, out of line,
# and history holds a reference; 0 turns the store off (every payload inline, as before
# 0022). A reference is about 60 bytes, so below a few KiB storing out of line buys nothing.
STORE_PAYLOAD_BYTES = int(os.environ.get("CAIRN_STORE_PAYLOAD_BYTES", 8 * 1024))
# The most one stored payload may take, as JSON before compression (the inline limit,
# MAX_PAYLOAD_BYTES, is then what history holds: a reference).
MAX_STORED_PAYLOAD_BYTES = int(os.environ.get("CAIRN_MAX_STORED_PAYLOAD_BYTES", 64 * 1024 * 1024))
# The reference's one key. "$" keeps it out of every identifier-like key user data has.
REF_KEY = "$cairn.payload"
# Compressed payloads kept in this process between to_payload and the write that stores
# them (and for resolving them again without a read); oldest dropped first past this.
MADE_CACHE_BYTES = 64 * 1024 * 1024
ZLIB_LEVEL = 6  # zlib's default: JSON text shrinks 3-10x; level 9 buys ~2 % for twice the CPU


@dataclass(frozen=True, slots=True)
class Held:
    """A payload this process made: its JSON compressed, its size, and the references in it
    (an LLM call's argument holds its messages')."""

    blob: bytes
    size: int
    refs: frozenset[str]


class _Made:
    """References this process made: hash -> :class:`Held`, oldest first, bounded by
    ``MADE_CACHE_BYTES``. Thread-safe (activity results are made in threads)."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Held] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def add(self, ref: str, held: Held) -> None:
        with self.lock:
            self.entries[ref] = held
            self.bytes += len(held.blob)
            while self.bytes > MADE_CACHE_BYTES and len(self.entries) > 1:
                _, old = self.entries.popitem(last=False)
                self.bytes -= len(old.blob)

    def touch(self, ref: str) -> bool:
        """Whether ``ref`` is held (and now the newest)."""
        with self.lock:
            if ref in self.entries:
                self.entries.move_to_end(ref)
                return True
            return False

    def get(self, ref: str) -> Held | None:
        return self.entries.get(ref)

    def __bool__(self) -> bool:
        return bool(self.entries)


_made = _Made()


def made() -> bool:
    """Whether this process has made a reference: until it has, no write looks for any
    (the writes of small payloads stay exactly as they were)."""
    return bool(_made)


def make_ref(data: Any, *, above: int = 0) -> Any:
    """Stores JSON ``data`` in this process as a payload and returns its reference (the
    store writes it with the event that holds the reference, ``cairn.store.payloads``);
    ``data`` itself if it takes ``above`` bytes as JSON or fewer."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) <= above:
        return data
    if len(text) > MAX_STORED_PAYLOAD_BYTES:
        raise InputValidationError(
            f"the payload is {len(text)} bytes as JSON, over the stored payload limit of "
            f"{MAX_STORED_PAYLOAD_BYTES} (CAIRN_MAX_STORED_PAYLOAD_BYTES): store large data elsewhere "
            "and pass a reference")
    ref = base64.urlsafe_b64encode(hashlib.sha256(text).digest()).rstrip(b"=").decode()
    if not _made.touch(ref):  # compressed once per process (a conversation's messages recur)
        _made.add(ref, Held(zlib.compress(text, ZLIB_LEVEL), len(text), frozenset(find_refs(data))))
    return {REF_KEY: ref}


def ref_of(value: Any) -> str | None:
    """The hash of a reference, or None if ``value`` is not one."""
    if type(value) is dict and len(value) == 1:
        ref = value.get(REF_KEY)
        if isinstance(ref, str):
            return ref
    return None


def local(ref: str) -> Held | None:
    """A payload this process made (None if not, or no longer held)."""
    return _made.get(ref)


def decode(blob: bytes) -> Any:
    """A stored payload's JSON data."""
    return json.loads(zlib.decompress(blob))


def find_refs(data: Any, out: set[str] | None = None) -> set[str]:
    """Every reference in JSON ``data`` (nested ones included)."""
    out = set() if out is None else out
    if isinstance(data, dict):
        ref = ref_of(data)
        if ref is not None:
            out.add(ref)
        else:
            for item in data.values():
                find_refs(item, out)
    elif isinstance(data, list | tuple):  # tuples: rows of the store's records
        for item in data:
            find_refs(item, out)
    return out


def jsonb_form(value: Any) -> Any:
    """JSON data as it comes back from a ``jsonb`` column: jsonb orders an object's keys by
    length, then bytewise; stores numbers as ``numeric``, which prints a float written with
    a positive exponent (``1e+16``) as an integer, and has no negative zero. The value is
    JSON data already (:func:`to_payload`). What code sees of a stored payload has this form
    wherever it comes from (the database, or this process's copy)."""
    if isinstance(value, dict):
        return {k: jsonb_form(value[k]) for k in sorted(value, key=lambda k: (len(k.encode()), k.encode()))}
    if isinstance(value, list):
        return [jsonb_form(v) for v in value]
    if isinstance(value, float):
        if value == 0.0:
            return 0.0
        text = repr(value)
        if "e+" in text:
            return int(decimal.Decimal(text))
    return value


def unref(data: Any) -> Any:
    """``data`` with the references this process made replaced by their values (what a
    caller validates right after :func:`to_payload`); nothing to do, and no walk, until
    this process has made one."""
    if not _made:
        return data
    refs = find_refs(data)
    if not refs:
        return data
    values = {}
    for ref in refs:
        held = _made.get(ref)
        if held is not None:
            values[ref] = unref(jsonb_form(decode(held.blob)))
    return replace_refs(data, values)


def replace_refs(data: Any, values: Mapping[str, Any]) -> Any:
    """``data`` with each reference of ``values`` replaced by its value (a new structure
    where something changed; the rest shared)."""
    if isinstance(data, dict):
        ref = ref_of(data)
        if ref is not None:
            return values.get(ref, data)
        return {k: replace_refs(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [replace_refs(v, values) for v in data]
    if isinstance(data, tuple):
        return tuple(replace_refs(v, values) for v in data)
    return data


def to_payload(value: Any, *, store: bool = True) -> Any:
    """Turns a Python value (models, dataclasses, datetimes, primitives) into JSON data.

    A value larger than ``STORE_PAYLOAD_BYTES`` as JSON becomes a reference to a stored
    payload (module docstring), unless ``store`` is False (memos, heartbeat details,
    failures and the JSON of records printed: values that never reach history, or are
    bounded on their own).

    Raises:
        InputValidationError: the value has no JSON form (NaN and infinities included:
            Postgres' jsonb refuses them), nests deeper than ``MAX_PAYLOAD_DEPTH``, is
            larger than ``MAX_PAYLOAD_BYTES`` encoded (``MAX_STORED_PAYLOAD_BYTES`` when
            stored; a warning is logged above ``WARN_PAYLOAD_BYTES``), or holds the reserved
            key ``$cairn.payload`` other than as a reference this process made.
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
    stored = bool(store and STORE_PAYLOAD_BYTES and size > STORE_PAYLOAD_BYTES and ref_of(data) is None)
    limit, name = (MAX_STORED_PAYLOAD_BYTES, "stored payload limit") if stored else (MAX_PAYLOAD_BYTES, "limit")
    if size > limit:  # a stored one is refused before it is encoded (make_ref checks exactly)
        raise InputValidationError(
            f"the payload is about {size} bytes as JSON, over the {name} of {limit} "
            f"({'CAIRN_MAX_STORED_PAYLOAD_BYTES' if stored else 'CAIRN_MAX_PAYLOAD_BYTES'}): store large data "
            "elsewhere and pass a reference")
    if size > WARN_PAYLOAD_BYTES:  # stored or not, every replay reads it
        log.warning("a payload of about %d bytes (warning above %d, limit %d): every replay reads it",
                    size, WARN_PAYLOAD_BYTES, limit)
    return make_ref(data) if stored else data  # stored out of line: history holds the reference


def check_memo(memo: Any) -> dict[str, Any] | None:
    """Validates a memo (a JSON object, at most ``MAX_MEMO_BYTES``) and returns its JSON form.

    Raises:
        InputValidationError: not a JSON object, or too large.
    """
    if memo is None:
        return None
    if not isinstance(memo, Mapping):
        raise InputValidationError("the memo must be a JSON object")
    payload = to_payload(dict(memo), store=False)  # raises InputValidationError for what JSON cannot hold
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
            if REF_KEY in data:  # a reference this process made, or a forgery
                if ref_of(data) is None or _made.get(data[REF_KEY]) is None:
                    raise InputValidationError(f"the key {REF_KEY!r} is reserved for Cairn's payload references")
                return 64
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
        args = unref(args)  # stored payloads this process just made: validate their values
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
        data = unref(data)
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
