"""How a provider's failure is classified: pure functions, no I/O.

Four kinds, each telling the engine what to do next:

- ``throttle``: the provider asks us to slow down (429, 503 with Retry-After). Reschedule at
  ``retry_after`` without burning an attempt.
- ``retryable``: a transient failure (5xx, 408, 409, timeouts, resets, truncated streams,
  malformed bodies, time to first token exceeded, output rejected by a predicate).
- ``fatal``: the account cannot pay (402, quota or credit exhausted): retrying is pointless
  until a human acts; breakers force open.
- ``non_retryable``: the request itself is wrong (400, 401, 403, 404, 422, context length).

Headers: ``retry-after-ms`` (float milliseconds) wins over ``retry-after`` (delta seconds or
an HTTP date); ``x-should-retry: true|false`` overrides the status-based decision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, NamedTuple

import httpx

ErrorKind = Literal["throttle", "retryable", "fatal", "non_retryable"]
KINDS: tuple[ErrorKind, ...] = ("throttle", "retryable", "fatal", "non_retryable")

EXCERPT_CHARS = 200  # enough to recognise the provider's message, short enough for a log line

# Wordings of "the account is out of money" (OpenAI, Anthropic, DeepSeek, OpenRouter).
_QUOTA = re.compile(
    r"insufficient_quota|exceeded your current quota|credit balance is too low|insufficient (?:balance|credits?)"
    r"|billing_hard_limit|billing hard limit|out of credits|payment required",
    re.IGNORECASE,
)
# Wordings of "the prompt does not fit" (OpenAI, Anthropic, vLLM, llama.cpp, Ollama).
_CONTEXT = re.compile(
    r"context_length_exceeded|maximum context length|prompt is too long|context window"
    r"|exceeds? the (?:available )?context size|too many tokens",
    re.IGNORECASE,
)
# Things that look like secrets, redacted from any excerpt we keep.
_SECRETISH = re.compile(r"(?:sk|pk|rk)-[A-Za-z0-9_\-*]{4,}|Bearer\s+\S+|[A-Za-z0-9_\-]{32,}")


class Classification(NamedTuple):
    """What a failure means.

    Attributes:
        kind: one of :data:`KINDS`.
        reason: a short code (``rate_limit``, ``quota``, ``context_length``, ``http_503``,
            ``timeout``, ``connection``, ``truncated``, ``malformed``, ``ttft``,
            ``invalid_output``, ...).
        retry_after: seconds the provider asked us to wait (>= 0), if it said.
        message: a short, sanitized excerpt of the provider's message (may be empty).
    """

    kind: ErrorKind
    reason: str
    retry_after: float | None = None
    message: str = ""


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or else ``retry-after``; ``None`` if absent or bad.

    ``retry-after`` is delta seconds or an HTTP date (RFC 9110); a date in the past gives 0.
    """
    h = _lower(headers)
    raw_ms = h.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms.strip())
        except ValueError:
            ms = float("nan")
        if ms == ms and ms not in (float("inf"), float("-inf")):  # finite
            return max(0.0, ms / 1000.0)
    raw = h.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates: RFC 5322 says UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    """The provider's own verdict from ``x-should-retry``, if it gave one."""
    value = _lower(headers).get("x-should-retry", "").strip().lower()
    return {"true": True, "false": False}.get(value)


def error_excerpt(body: str, *, secrets: Iterable[str] = ()) -> str:
    """A short, single-line, sanitized excerpt of a provider's error body.

    Takes ``error.message`` from the OpenAI/Anthropic JSON shapes (else the raw text),
    redacts the given secrets and anything that looks like a key, and truncates.
    """
    text = body
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed)
        if isinstance(err, dict):
            parts = [str(err[k]) for k in ("type", "code") if isinstance(err.get(k), str)]
            msg = err.get("message")
            text = " ".join([*dict.fromkeys(parts), str(msg)] if msg is not None else parts) or body
        elif isinstance(err, str):
            text = err
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SECRETISH.sub("***", " ".join(text.split()))
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def classify_status(status: int, headers: Mapping[str, str], body: str = "", *,
                    now: datetime | None = None, secrets: Iterable[str] = ()) -> Classification:
    """Classifies an HTTP error answer (status >= 400, or any status the call cannot use).

    The body decides first (context length → non_retryable, quota → fatal, whatever the
    status); then ``x-should-retry``; then the status.
    """
    retry_after = parse_retry_after(headers, now=now)
    message = error_excerpt(body, secrets=secrets)
    if _CONTEXT.search(body):
        return Classification("non_retryable", "context_length", None, message)
    if status == 402 or (400 <= status < 500 and _QUOTA.search(body)):
        return Classification("fatal", "quota", None, message)
    verdict = should_retry_header(headers)
    if verdict is False:
        return Classification("non_retryable", f"http_{status}", None, message)
    if status == 429:
        return Classification("throttle", "rate_limit", retry_after, message)
    if status == 503 and retry_after is not None:
        return Classification("throttle", "overloaded", retry_after, message)
    if status >= 500 or status in (408, 409):
        return Classification("retryable", f"http_{status}", retry_after, message)
    if verdict is True:
        return Classification("retryable", f"http_{status}", retry_after, message)
    return Classification("non_retryable", f"http_{status}", None, message)


def classify_stream_error(error_type: str, message: str) -> Classification:
    """Classifies an error event inside a stream (Anthropic's ``event: error``)."""
    text = f"{error_type} {message}"
    excerpt = error_excerpt(text)
    if _CONTEXT.search(text):
        return Classification("non_retryable", "context_length", None, excerpt)
    if _QUOTA.search(text):
        return Classification("fatal", "quota", None, excerpt)
    if "rate_limit" in error_type:
        return Classification("throttle", "rate_limit", None, excerpt)
    if error_type in ("invalid_request_error", "authentication_error", "permission_error", "not_found_error"):
        return Classification("non_retryable", error_type, None, excerpt)
    return Classification("retryable", error_type or "stream_error", None, excerpt)


def classify_transport(exc: BaseException) -> Classification:
    """Classifies an exception raised by httpx while connecting, sending or reading."""
    if isinstance(exc, httpx.ConnectTimeout):
        return Classification("retryable", "timeout", None, "connect timeout")
    if isinstance(exc, httpx.PoolTimeout):
        return Classification("retryable", "timeout", None, "no free connection in time")
    if isinstance(exc, httpx.TimeoutException):
        return Classification("retryable", "timeout", None, "read timeout (no byte in time)")
    if isinstance(exc, httpx.ConnectError):
        return Classification("retryable", "connection", None, "cannot connect (refused or unreachable)")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Classification("non_retryable", "bad_url", None, "unsupported URL scheme")
    if isinstance(exc, httpx.RemoteProtocolError):
        return Classification("retryable", "truncated", None, "connection closed before the answer was complete")
    if isinstance(exc, httpx.NetworkError | httpx.ProtocolError):
        return Classification("retryable", "connection", None, "connection reset")
    if isinstance(exc, httpx.DecodingError):
        return Classification("retryable", "malformed", None, "undecodable body")
    if isinstance(exc, httpx.TransportError):
        return Classification("retryable", "connection", None, type(exc).__name__)
    if isinstance(exc, ConnectionError):
        return Classification("retryable", "connection", None, "connection reset")
    raise TypeError(f"not a transport error: {type(exc).__name__}")


def truncated_stream() -> Classification:
    """A stream that ended before its end marker."""
    return Classification("retryable", "truncated", None, "stream ended before its end marker")


def malformed_body(what: str) -> Classification:
    """A body that is not the JSON the dialect promises."""
    return Classification("retryable", "malformed", None, f"malformed {what}")


def ttft_exceeded(limit: float) -> Classification:
    """No first token within ``ttft_timeout``."""
    return Classification("retryable", "ttft", None, f"time to first token exceeded ({limit:g} s)")


def total_timeout(limit: float) -> Classification:
    """The whole call took longer than ``timeout``."""
    return Classification("retryable", "timeout", None, f"call exceeded its total timeout ({limit:g} s)")


def invalid_output() -> Classification:
    """The completion was rejected by the caller's ``validate`` predicate."""
    return Classification("retryable", "invalid_output", None, "output rejected by the validate predicate")
