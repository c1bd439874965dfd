"""The start-up durability check.

Cairn's promise (an acknowledged start or completion survives a crash) needs ``fsync`` and
``synchronous_commit`` on: workers and clients refuse a server that has them off unless
told ``CAIRN_ALLOW_UNSAFE_DURABILITY=1`` (or ``--unsafe-durability``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psycopg

from cairn.errors import ConfigurationError

# The durability warnings keep the logger name they have always had (logging set-ups filter on it).
log = logging.getLogger("cairn.limits")

ENV_UNSAFE_DURABILITY = "CAIRN_ALLOW_UNSAFE_DURABILITY"
# Milliseconds a session may sit idle inside a transaction before Postgres ends it: a
# client or worker stuck mid-transaction must not hold row locks (a run's task) for ever
# (cairn.store.db.CLIENT_CONNECTION_OPTIONS sets it on the client's sessions).
CLIENT_IDLE_TX_TIMEOUT_MS = 60_000

DURABILITY_SQL = ("SELECT current_setting('fsync') AS fsync, "
                  "current_setting('synchronous_commit') AS synchronous_commit")


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


def check_server(conn: psycopg.Connection[Any], *, who: str, allow_unsafe: bool = False) -> None:
    """Reads the server's durability settings on ``conn`` (a connection made without Cairn's
    session options, such as ``cairn.store.db.connect_sync``'s) and refuses an unsafe server
    (:func:`check_durability`)."""
    row = conn.execute(DURABILITY_SQL).fetchone()
    check_durability({"fsync": row[0], "synchronous_commit": row[1]} if row else {}, allow_unsafe=allow_unsafe,
                     who=who)
