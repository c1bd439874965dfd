"""Limits that protect the engine from its inputs, and the start-up safety checks.

Payload limits live in :mod:`cairn.options` (``MAX_PAYLOAD_BYTES``, ``WARN_PAYLOAD_BYTES``,
``MAX_PAYLOAD_DEPTH``) because :func:`cairn.options.to_payload` enforces them. Here:

- the history length limit: every cache miss replays the whole history, so a run that
  never ends (a loop of signals or timers) gets slower and heavier until it is continued
  as new. A warning at ``WARN_HISTORY_EVENTS``; past ``MAX_HISTORY_EVENTS`` its workflow
  tasks fail (history untouched, backed off, shown by ``describe``) with advice to
  continue as new, unless the task closes the run (completing, failing or continuing as
  new is always allowed);
- the durability check: Cairn's promise (an acknowledged start or completion survives a
  crash) needs ``fsync`` and ``synchronous_commit`` on; workers and clients refuse a
  server that has them off unless told ``CAIRN_ALLOW_UNSAFE_DURABILITY=1``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.errors import CairnError, ConfigurationError

log = logging.getLogger("cairn.limits")

WARN_HISTORY_EVENTS = int(os.environ.get("CAIRN_WARN_HISTORY_EVENTS", 10_000))
MAX_HISTORY_EVENTS = int(os.environ.get("CAIRN_MAX_HISTORY_EVENTS", 50_000))
ENV_UNSAFE_DURABILITY = "CAIRN_ALLOW_UNSAFE_DURABILITY"
# Milliseconds a session may sit idle inside a transaction before Postgres ends it: a
# client or worker stuck mid-transaction must not hold row locks (a run's task) for ever.
CLIENT_IDLE_TX_TIMEOUT_MS = 60_000


class HistoryTooLong(CairnError):
    """A workflow task would grow the run's history past ``MAX_HISTORY_EVENTS``."""


def check_history_length(events: Sequence[Event], workflow_id: str, run_id: str, *,
                         limit: int | None = None, warn: int | None = None) -> HistoryTooLong | None:
    """The error to fail a workflow task with if its events take the history past the limit.

    Returns None when the task may be recorded (logging a warning past the warning mark).
    A task that closes the run is always allowed: it is the way out.
    """
    if not events:
        return None
    limit = MAX_HISTORY_EVENTS if limit is None else limit
    warn = WARN_HISTORY_EVENTS if warn is None else warn
    length = events[-1].seq
    if length <= warn:
        return None
    if length > limit and not any(e.type in h.TERMINAL_EVENTS for e in events):
        return HistoryTooLong(
            f"the history of {workflow_id!r} (run {run_id}) would reach {length} events, over the limit "
            f"of {limit} (CAIRN_MAX_HISTORY_EVENTS): continue-as-new advised "
            "(workflow.continue_as_new) to start a fresh history")
    log.warning("the history of %s (run %s) has %d events (limit %d): continue-as-new advised",
                workflow_id, run_id, length, limit)
    return None


def unsafe_durability_allowed(flag: bool = False) -> bool:
    """Whether the caller accepts a server that may lose acknowledged commits."""
    return flag or os.environ.get(ENV_UNSAFE_DURABILITY, "").strip().lower() in ("1", "true", "yes", "on")


def durability_problems(settings: dict[str, Any]) -> list[str]:
    """What is unsafe in a server's settings (``fsync``, ``synchronous_commit``)."""
    problems = []
    if str(settings.get("fsync", "on")).lower() == "off":
        problems.append("fsync=off (a server crash can lose or corrupt committed data)")
    if str(settings.get("synchronous_commit", "on")).lower() == "off":
        problems.append("synchronous_commit=off (a server crash can lose acknowledged commits)")
    return problems


DURABILITY_SQL = ("SELECT current_setting('fsync') AS fsync, "
                  "current_setting('synchronous_commit') AS synchronous_commit")


def check_durability(settings: dict[str, Any], *, allow_unsafe: bool = False, who: str = "cairn") -> None:
    """Refuses (ConfigurationError) a server whose settings break Cairn's durability promise.

    ``settings`` is what ``DURABILITY_SQL`` returns on a connection *without* Cairn's own
    ``synchronous_commit=on`` session option, so it shows the server's (database's, role's)
    default: a session that forgot the option would run with it.
    """
    problems = durability_problems(settings)
    if not problems:
        return
    if unsafe_durability_allowed(allow_unsafe):
        log.warning("%s: running on an unsafe server (%s) because %s is set", who, "; ".join(problems),
                    ENV_UNSAFE_DURABILITY)
        return
    raise ConfigurationError(
        f"{who}: the database server is not durable: {'; '.join(problems)}. Cairn's guarantees need "
        f"both on. Set {ENV_UNSAFE_DURABILITY}=1 (or --unsafe-durability) to run anyway, e.g. for throwaway tests.")
