"""Database set-up: which Postgres to use, migrations, connections and pools, and psycopg
error translation.

The layers above the store never touch psycopg: they hold the store's own handles (a
:class:`Pool`, and a :data:`Conn` checked out of it, which they only hand back to store
functions), and catch Cairn errors, which the store functions raise in place of psycopg's
(:func:`translate`, :func:`translated`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import select
import signal
import time
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pgerr
from psycopg_pool import AsyncConnectionPool

from cairn import redaction
from cairn.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    InputValidationError,
    OutcomeUnknown,
    SchemaNotReadyError,
)
from cairn.store import durability
from cairn.store import payloads as _payloads  # noqa: F401  (registers the JSON loaders that spot references)
from cairn.store.sql import q

ENV_URL = "CAIRN_DATABASE_URL"
ENV_HOME = "CAIRN_HOME"  # where the embedded server keeps its data
log = logging.getLogger("cairn.db")

# synchronous_commit=on: an acknowledged start is durable. idle_in_transaction_session_timeout:
# a caller's transaction (start with conn=..., terminate) left open cannot hold a run's
# task lock for ever (cairn.store.durability.CLIENT_IDLE_TX_TIMEOUT_MS; the worker sets its own).
CONNECTION_OPTIONS = "-c synchronous_commit=on"
CLIENT_CONNECTION_OPTIONS = f"{CONNECTION_OPTIONS} -c idle_in_transaction_session_timeout=60000"
POOL_OPEN_TIMEOUT_SECONDS = 30.0  # how long open_pool waits for its first connections

# A session checked out of a store pool: the layers above pass it back to store functions
# only (they type it with this alias and never import psycopg).
Conn = psycopg.AsyncConnection[Any]
# Any pool of such sessions: a Pool, or psycopg's own (tests make them).
AnyPool = AsyncConnectionPool[Any]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def data_dir() -> Path:
    """Cairn's per-user data directory (``CAIRN_HOME`` overrides it)."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME])
    import platformdirs

    return Path(platformdirs.user_data_dir("cairn", appauthor=False))


def embedded_url(directory: Path | None = None) -> str:
    """Starts (or joins) the embedded Postgres in the data directory and returns its URL.

    The server outlives this process, so concurrent and later CLI invocations share it;
    pgserver serialises its start-up with a file lock.
    """
    pgdata = (directory or data_dir()) / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    orphan = orphaned_postmaster(pgdata)
    if orphan is not None:
        stop_postmaster(orphan)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]  # not in its __all__

        server = get_server(pgdata, cleanup_mode=None)
        return str(server.get_uri())


def orphaned_postmaster(pgdata: Path) -> int | None:
    """The pid of a server running on ``pgdata`` from binaries that were deleted since it
    started (a removed virtualenv: ``rm -rf .venv && make demo``), or None. Joining such a
    server fails ("could not access file $libdir/plpgsql"); Linux shows the deleted binary
    as ``/proc/PID/exe -> ... (deleted)``. Elsewhere, or for a live install, None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError):
        return None
    return pid if exe.endswith(" (deleted)") else None


def stop_postmaster(pid: int, timeout: float = 30.0) -> None:
    """Stops a server (SIGINT: fast shutdown, open transactions rolled back) and waits for
    it to exit, so that the embedded server can start again on its data directory."""
    log.warning("stopping the embedded Postgres (pid %s) left running by a deleted install", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.1)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process its parent has not reaped yet does not)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except OSError:  # no /proc: it answered the signal
        return True


def resolve_url(url: str | None = None) -> tuple[str, bool]:
    """The database URL to use and whether it is the embedded server."""
    if url:
        return url, False
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL], False
    return embedded_url(), True


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):([^@\s]*)@")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)")
MIN_SCRUBBED_SECRET = 4  # shorter passwords are only masked where their form shows them


def redact(text: str) -> str:
    """A URL (or a libpq ``key=value`` string, or any message holding one) without its
    password, for messages and logs; passwords of URLs used by this process are masked
    wherever they appear (libpq echoes parts of a malformed URL in its errors)."""
    out = _URL_PASSWORD.sub(r"\1:***@", text)
    out = _KEYWORD_PASSWORD.sub(r"\1***", out)
    return redaction.redact(out)  # the passwords and API keys this process presented


def remember_secret(url: str) -> None:
    """Notes the URL's password, so that :func:`redact` masks it in any text."""
    found = [m.group(2) for m in _URL_PASSWORD.finditer(url)]
    found += [m.group(2).strip("'") for m in _KEYWORD_PASSWORD.finditer(url)]
    for secret in found:
        for form in (secret, urllib.parse.unquote(secret)):
            if form != "***":
                redaction.remember(form, min_chars=MIN_SCRUBBED_SECRET)


class RedactingFilter(logging.Filter):
    """Masks passwords in log records (psycopg's pool logs its connection errors)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


# A logger's filters do not apply to its children's records: name each logger that may
# carry a connection error (psycopg's pool logs "error connecting in ...: <libpq text>").
for _name in ("psycopg", "psycopg.pool", "cairn", "cairn.worker", "cairn.workflow", "cairn.limits", "cairn.llm",
              "cairn.breakers"):
    logging.getLogger(_name).addFilter(RedactingFilter())


# ---------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The migrations shipped with this version of Cairn, in order."""
    out = []
    for entry in files("cairn").joinpath("store/migrations").iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    if [m.version for m in out] != list(range(1, len(out) + 1)):
        raise ConfigurationError("migrations are not numbered 0001, 0002, ... without gaps")
    return out


@dataclass(frozen=True)
class SchemaStatus:
    applied: list[int]
    pending: list[int]
    mismatched: list[int]  # applied migrations whose file has changed since

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.mismatched


def _applied(conn: psycopg.Connection[Any]) -> dict[int, str]:
    row = conn.execute(q("versions_table_exists")).fetchone()
    if not row or not row[0]:
        return {}
    return {v: c for v, _, c, _ in conn.execute(q("applied_versions")).fetchall()}


def schema_status(conn: psycopg.Connection[Any]) -> SchemaStatus:
    """Which migrations are applied, pending, or changed since they were applied."""
    applied = _applied(conn)
    known = migrations()
    return SchemaStatus(
        applied=sorted(applied),
        pending=[m.version for m in known if m.version not in applied],
        mismatched=[m.version for m in known if m.version in applied and applied[m.version] != m.checksum],
    )


def migrate(url: str) -> list[int]:
    """Applies pending migrations under an advisory lock; returns the versions applied.

    Two concurrent migrates are safe: the second waits for the lock, then finds nothing
    left to do. Each migration runs in its own transaction with its version row.
    """
    done: list[int] = []
    with connect_sync(url) as conn:
        conn.execute(q("migrate_lock"))
        try:
            conn.execute(q("create_versions_table"))
            applied = _applied(conn)
            for m in migrations():
                if m.version in applied:
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())  # trusted package data, run as a script
                    conn.execute(q("record_version"),
                                 {"version": m.version, "name": m.name, "checksum": m.checksum})
                done.append(m.version)
        except pgerr.InsufficientPrivilege as exc:
            # The role, not the command, is wrong: an environment error (exit 1), saying what is denied.
            raise ConfigurationError(
                f"role {conn.info.user!r} cannot migrate the Cairn schema: {_first_line(exc)}; migrations "
                f"need CREATE on database {conn.info.dbname!r} and ownership of schema cairn: run "
                "`cairn db migrate` as the schema's owner (see `cairn db roles`)") from None
        except psycopg.Error as exc:
            raise translate(exc) from None
        finally:
            conn.execute(q("migrate_unlock"))
    return done


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Raises :class:`SchemaNotReadyError` unless every migration is applied."""
    status = schema_status(conn)
    if status.pending:
        raise SchemaNotReadyError(
            f"the database schema is not up to date (pending migrations: {status.pending}): "
            "run `cairn db migrate`"
        )


def connect_sync(url: str) -> psycopg.Connection[Any]:
    """A plain autocommit connection, with connection errors translated (password masked)."""
    remember_secret(url)
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise _connect_error(url, exc) from None


async def connect_async(url: str) -> psycopg.AsyncConnection[Any]:
    """:func:`connect_sync` for asyncio: the same errors, the password masked."""
    remember_secret(url)
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise _connect_error(url, exc) from None


def _connect_error(url: str, exc: psycopg.Error) -> InputValidationError | DatabaseError:
    if isinstance(exc, psycopg.ProgrammingError):  # libpq could not parse the URL: bad input
        return InputValidationError(f"invalid database URL {redact(url)}: {_first_line(exc)}")
    return DatabaseError(f"cannot connect to {redact(url)}: {_first_line(exc)}")


# ---------------------------------------------------------------- errors


def _first_line(exc: BaseException) -> str:
    return redact((str(exc).strip().splitlines() or [type(exc).__name__])[0])


# SQLSTATEs of a session that is gone or going: connection exceptions (class 08), and the
# server shutting down, crashed, or still starting (57P01-57P03). Errors raised by libpq or
# the pool (the socket closed, no connection in time) carry no SQLSTATE.
_LOST_SQLSTATES = ("57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """True if ``exc`` says the connection is gone (or could not be had), not that the
    statement failed: the same statement may succeed on a fresh connection."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _LOST_SQLSTATES


def translate(exc: psycopg.Error) -> Exception:
    """The one place psycopg errors become Cairn errors (messages carry no parameters)."""
    if isinstance(exc, pgerr.UndefinedTable | pgerr.InvalidSchemaName | pgerr.UndefinedFunction):
        return SchemaNotReadyError(f"the Cairn schema is missing ({_first_line(exc)}): run `cairn db migrate`")
    if connection_lost(exc):
        return DatabaseUnavailable(f"database connection failed: {_first_line(exc)}")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseError(f"database connection failed: {_first_line(exc)}")
    return DatabaseError(f"database error: {type(exc).__name__}: {_first_line(exc)}")


def translated(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """A store function whose psycopg errors leave it as Cairn errors (:func:`translate`;
    ``from None``, so the psycopg error stays reachable as ``__context__``, where
    :func:`read_only_refusal` looks for it)."""
    @functools.wraps(fn)
    async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except psycopg.Error as exc:
            raise translate(exc) from None

    return run


def translate_write(exc: psycopg.Error, *, what: str, check: str) -> Exception:
    """:func:`translate` for an error met once a write may have been sent: a lost connection
    is an :class:`OutcomeUnknown` saying ``what`` it was and how to ``check`` it."""
    if connection_lost(exc):
        return OutcomeUnknown(f"the connection to the database was lost while {what}, which may or may not have "
                              f"taken effect: {check}")
    return translate(exc)


# ---------------------------------------------------------------- the connection pool

READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction


def read_only_refusal(exc: BaseException) -> bool:
    """True if ``exc`` (or the psycopg error it was translated from) is the server refusing a
    write because the session is read-only: a standby, or ``default_transaction_read_only``."""
    seen: BaseException | None = exc
    for _ in range(3):  # the error itself, or the one it was raised from or during
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) == READ_ONLY_SQLSTATE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _closed_by_server(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True if an idle pooled session has heard from the server: Cairn's pooled sessions
    LISTEN to nothing, so that is the last word of a backend that was terminated or shut
    down (an error, then end of file). One poll of the socket, no round trip."""
    if conn.closed or conn.broken:
        return True
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:  # libpq has no socket for it any more
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # Windows: no poll()


class Pool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """psycopg's pool, minus the sessions that cannot serve Cairn again.

    A session the server closed while it sat in the pool (a restart, a failover,
    ``pg_terminate_backend``) is discarded when it is handed out, before anything is sent
    on it: a statement is never lost to a connection that was dead already.

    A session opened while the database was read-only (a managed failover behind one
    endpoint, ``ALTER DATABASE ... SET default_transaction_read_only``) keeps that default
    for its lifetime: the first write it refuses closes it, and the pool opens a new one.
    """

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        conn = await super().getconn(timeout)
        for _ in range(self.max_size):  # each dead one is replaced in the background
            if not _closed_by_server(conn):
                break
            await conn.close()
            await self.putconn(conn)
            conn = await super().getconn(timeout)
        return conn

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        # psycopg_pool's connection() (minus its usage-time statistic), not a wrapper around
        # it: one generator per checkout on the worker's hot path, not two.
        conn = await self.getconn(timeout)
        try:
            async with conn:
                yield conn
        except BaseException as exc:
            if read_only_refusal(exc):
                await conn.close()  # returned closed: the pool replaces it
            raise
        finally:
            await self.putconn(conn)


async def open_pool(url: str, *, max_size: int, min_size: int = 1, options: str = CONNECTION_OPTIONS,
                    configure: Callable[[Conn], Awaitable[None]] | None = None,
                    timeout: float = POOL_OPEN_TIMEOUT_SECONDS) -> Pool:
    """The one way to open a :class:`Pool` of autocommit sessions: it waits for its first
    connections, and a database out of reach raises :class:`DatabaseUnavailable` whose
    message masks the URL's password (and any remembered secret libpq echoes).

    Args:
        url: the database URL (its password is remembered, so that :func:`redact` masks it).
        max_size: the most sessions the pool holds.
        min_size: the sessions it keeps open.
        options: the sessions' ``options`` (server settings such as ``-c synchronous_commit=on``).
        configure: run on every new session (the worker prepares its hot statements).
        timeout: seconds to wait for the first sessions.

    Raises:
        DatabaseUnavailable: no session could be opened in ``timeout``.
    """
    remember_secret(url)
    pool = Pool(url, min_size=min_size, max_size=max_size, open=False,
                kwargs={"autocommit": True, "options": options}, configure=configure)
    try:
        await pool.open(wait=True, timeout=timeout)
    except Exception as exc:
        await pool.close()
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {redact(str(exc))}") from None
    return pool


def ensure_ready(url: str, embedded: bool, *, who: str) -> None:
    """Checks the server's durability settings and the schema before a client or a worker
    connects its pool; migrates the embedded server's schema (a server you run is migrated
    by its owner, ``cairn migrate``)."""
    with connect_sync(url) as conn:
        durability.check_server(conn, who=who)
        if embedded and not schema_status(conn).up_to_date:
            migrate(url)
        elif not embedded:
            check_schema(conn)
