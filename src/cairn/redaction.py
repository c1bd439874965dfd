"""Secrets that must never be written: the API keys and database passwords this process
presented.

A provider (self-hosted vLLM, a gateway) may echo the presented key in an error body, and
such keys need not look like ``sk-...``; libpq echoes parts of a malformed URL. So every
secret value Cairn presents is remembered here, and error text is passed through
:func:`redact` wherever it is built: provider errors, recorded failures (history,
``runs.failure``), CLI error lines and (``cairn.store.db``'s logging filter) log lines.

This module imports nothing of Cairn's: any layer may use it.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["MASK", "MIN_SECRET_CHARS", "redact", "redact_value", "remember"]

MASK = "***"
# Shorter values are not treated as secrets: masking every "abc" would garble the text
# and no real API key is that short.
MIN_SECRET_CHARS = 8

_secrets: tuple[str, ...] = ()
_lock = threading.Lock()


def remember(value: str | None, *, min_chars: int = MIN_SECRET_CHARS) -> None:
    """Adds a secret value (an API key, a password) to those masked from now on, in this
    process; values shorter than ``min_chars`` are ignored."""
    global _secrets
    if not value or len(value) < min_chars or value in _secrets:
        return
    with _lock:
        # Longest first, so that a secret containing another is masked whole.
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_value(value: Any) -> Any:
    """A JSON-like value with every string in it redacted (dict keys included)."""
    if not _secrets:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
