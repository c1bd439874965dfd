"""The client side of messages: the checks and limits of signals and queries.

A signal is a ``SignalReceived`` event in the run's inbox (``signal_run``); a query is a row
in ``cairn.query_requests`` that a worker serving the run's queue answers (see
ARCHITECTURE.md, "Invariants": the inbox protocol). The calls are :class:`cairn.client.Client`'s and
:class:`cairn.client.WorkflowHandle`'s (``signal``, ``query``, ``signal_with_start``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cairn.errors import InputValidationError
from cairn.handlers import check_message_args, message_ref
from cairn.options import check_text, shown
from cairn.payloads import to_payload

QUERY_TIMEOUT_SECONDS = 10.0  # how long client.query waits for a worker's answer by default
QUERY_RECHECK_SECONDS = 1.0   # re-read the answer this often, in case a NOTIFY was missed
MAX_NAME_LENGTH = 200         # signal and query names
CHECK_SIGNAL = ("look for it in `cairn history {workflow_id}` (or handle.history()) before sending it again; "
                "a workflow that must see a signal once should dedupe it by a key in its payload")


def validate_name(name: str, what: str) -> str:
    """A signal or query name: non-empty text of at most 200 characters that Postgres can store."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        got = shown(name) if isinstance(name, str) else repr(name)
        raise InputValidationError(f"the {what} name must be a non-empty string of at most "
                                   f"{MAX_NAME_LENGTH} characters, got {got}")
    return check_text(name, f"the {what} name")


def validate_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or not timeout > 0:
        raise InputValidationError(f"the query timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)




def signal_data(signal: str | Callable[..., Any], args: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """A signal's name and its ``SignalReceived`` data, checked before anything is written:
    one argument as ``payload`` (the form every history has), none as a ``null`` payload,
    several as ``args``. A signal named by its ``@workflow.signal`` method has its arguments
    checked against the method's annotations.

    Raises:
        InputValidationError: a bad name, or an argument with no JSON form or that the
            handler method cannot take.
    """
    name, signature = message_ref(signal, "signal")
    name = validate_name(name, "signal")
    payload = [to_payload(a) for a in args]
    check_message_args(signature, payload, f"signal {name!r}")
    if len(payload) <= 1:
        return name, {"name": name, "payload": payload[0] if payload else None}
    return name, {"name": name, "args": payload}
