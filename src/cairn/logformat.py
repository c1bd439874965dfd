"""Structured log records: ``cairn worker --log-format json`` writes one JSON object per line.

Cairn's log records carry ``extra`` fields: ``workflow_id``, ``run_id``, ``workflow_type``
(workflow code's ``workflow.logger``), ``activity`` and ``attempt`` (activity attempts).
:class:`JsonFormatter` puts them, any other extra field, and the trace and span ids of
the current OpenTelemetry span (when one is recording) next to the message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

# The attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# Structured fields first, in this order, when a record has them.
FIELDS = ("workflow_id", "run_id", "workflow_type", "activity", "attempt")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: ``time``, ``level``, ``logger``, ``message``,
    the structured fields (:data:`FIELDS` and other extras), ``trace_id``/``span_id`` and
    ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        out.update({k: extras.pop(k) for k in FIELDS if k in extras})
        out.update(extras)
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def use_json(logger: logging.Logger | None = None) -> None:
    """Makes every handler of ``logger`` (default: the root logger) write JSON lines."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())
