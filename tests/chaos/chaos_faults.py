"""The ambiguous-commit fault wrapper: named Cairn statements fail before they execute, or
after they commit, as if the connection had dropped at that moment.

It wraps psycopg's ``AsyncCursor.execute`` (every ``conn.execute`` goes through it) and
recognises Cairn's statements by their text (``cairn.store.sql.q``), or, for the hot
path's prepared statements, by the ``EXECUTE cairn_<name>(`` they are sent as
(``cairn.store.transactions``). "Before" raises ``OperationalError`` without sending the
statement: nothing happened. "After" lets it run and then raises: at once if the
statement has committed (autocommit, or a ``; COMMIT`` sent with it); inside a transaction
when the transaction has committed (``AsyncTransaction`` exit, ``AsyncConnection.commit``,
or a later statement sent with its COMMIT), so the caller hears "connection lost" about
work that is durable -- the case a client or worker cannot tell apart from a failure.

Worker subprocesses install it from the environment (``chaos_flows`` calls
:func:`install_from_env` on import); the test's own client installs it in-process for
``start_workflow`` with :func:`installed`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg

from cairn.store.sql import q

_EXECUTE = re.compile(r"(?:BEGIN; )?EXECUTE cairn_(\w+)\(")
ENV = "CAIRN_CHAOS_AMBIGUOUS"  # JSON: {"statements": [...], "before": p, "after": p, "seed": n, "log": path}

# The statements the issue names: start, claim, complete, append.
WORKER_STATEMENTS = ("claim_workflow_task", "claim_activity_tasks", "complete_activity",
                     "complete_activities_and_lock", "complete_activities_speculated", "record_workflow_tasks")
CLIENT_STATEMENTS = ("start_workflow",)


class InjectedFault(psycopg.OperationalError):
    """An injected connection loss (an OperationalError, like the real thing)."""


class _Faults:
    def __init__(self, statements: Iterable[str], before: float, after: float, seed: int,
                 log_path: str | None = None) -> None:
        self.by_text = {q(name): name for name in statements}
        self.by_bytes = {text.encode(): name for text, name in self.by_text.items()}
        self.names = set(self.by_text.values())
        self.before = before
        self.after = after
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()  # "before:<name>" / "after:<name>"
        self.log_path = log_path  # a subprocess appends each fault here, for the test's report

    def note(self, what: str) -> None:
        with self.lock:
            self.injected[what] += 1
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(what + "\n")

    def name_of(self, query: Any) -> str | None:
        if isinstance(query, bytes):
            return self.by_bytes.get(query)
        if isinstance(query, str):
            if (m := _EXECUTE.match(query)) is not None:
                return m.group(1) if m.group(1) in self.names else None
            return self.by_text.get(query)
        return None

    def draw(self) -> str | None:
        with self.lock:
            x = self.rng.random()
        if x < self.before:
            return "before"
        if x < self.before + self.after:
            return "after"
        return None


_active: _Faults | None = None
_originals: dict[str, Any] = {}


def install(statements: Iterable[str], *, before: float, after: float, seed: int,
            log_path: str | None = None) -> None:
    """Wraps psycopg's async cursor and transaction with the fault injector (idempotent)."""
    global _active
    _active = _Faults(statements, before, after, seed, log_path)
    if _originals:
        return
    cursor_execute = psycopg.AsyncCursor.execute
    tx_exit = psycopg.AsyncTransaction.__aexit__
    conn_commit = psycopg.AsyncConnection.commit
    conn_rollback = psycopg.AsyncConnection.rollback
    _originals.update(execute=cursor_execute, aexit=tx_exit, commit=conn_commit, rollback=conn_rollback)

    def committed(conn: psycopg.AsyncConnection[Any]) -> None:
        """Raises the pending "after" fault once the connection's transaction has committed."""
        name = getattr(conn, "_chaos_fail_after_commit", None)
        if name is not None and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn._chaos_fail_after_commit = None  # type: ignore[attr-defined]
            raise InjectedFault(f"chaos: connection lost after {name} committed")

    async def execute(self: psycopg.AsyncCursor[Any], query: Any, params: Any = None, **kw: Any) -> Any:
        faults = _active
        name = faults.name_of(query) if faults is not None else None
        if faults is None or name is None:
            result = await cursor_execute(self, query, params, **kw)
            committed(self.connection)
            return result
        when = faults.draw()
        if when == "before":
            faults.note(f"before:{name}")
            raise InjectedFault(f"chaos: connection lost before {name}")
        result = await cursor_execute(self, query, params, **kw)
        if when == "after":
            faults.note(f"after:{name}")
            conn = self.connection
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                conn._chaos_fail_after_commit = name  # type: ignore[attr-defined]
            else:
                raise InjectedFault(f"chaos: connection lost after {name} committed")
        committed(self.connection)
        return result

    async def commit(self: psycopg.AsyncConnection[Any]) -> None:
        await conn_commit(self)
        committed(self)

    async def rollback(self: psycopg.AsyncConnection[Any]) -> None:
        self._chaos_fail_after_commit = None  # type: ignore[attr-defined]  # nothing committed
        await conn_rollback(self)

    async def aexit(self: psycopg.AsyncTransaction, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool:
        handled = await tx_exit(self, exc_type, exc_val, exc_tb)
        conn = self.connection
        name = getattr(conn, "_chaos_fail_after_commit", None)
        outermost = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if name is not None and outermost:
            conn._chaos_fail_after_commit = None  # type: ignore[attr-defined]
            if exc_type is None:  # it committed: now the reply is "lost"
                raise InjectedFault(f"chaos: connection lost after {name} committed")
        return bool(handled)

    psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]
    psycopg.AsyncTransaction.__aexit__ = aexit  # type: ignore[method-assign]
    psycopg.AsyncConnection.commit = commit  # type: ignore[method-assign]
    psycopg.AsyncConnection.rollback = rollback  # type: ignore[method-assign]


def uninstall() -> Counter[str]:
    """Restores psycopg; returns what was injected."""
    global _active
    injected = _active.injected if _active is not None else Counter()
    _active = None
    if _originals:
        psycopg.AsyncCursor.execute = _originals.pop("execute")  # type: ignore[method-assign]
        psycopg.AsyncTransaction.__aexit__ = _originals.pop("aexit")  # type: ignore[method-assign]
        psycopg.AsyncConnection.commit = _originals.pop("commit")  # type: ignore[method-assign]
        psycopg.AsyncConnection.rollback = _originals.pop("rollback")  # type: ignore[method-assign]
    return injected


@contextlib.contextmanager
def installed(statements: Iterable[str], *, before: float, after: float, seed: int) -> Iterator[_Faults]:
    """In-process: the faults hold inside the block."""
    install(statements, before=before, after=after, seed=seed)
    assert _active is not None
    faults = _active
    try:
        yield faults
    finally:
        uninstall()


def install_from_env() -> None:
    """In a worker subprocess: install the faults ``CAIRN_CHAOS_AMBIGUOUS`` describes."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    cfg = json.loads(spec)
    install(cfg.get("statements", WORKER_STATEMENTS), before=float(cfg["before"]), after=float(cfg["after"]),
            seed=int(cfg["seed"]), log_path=cfg.get("log"))
