"""Database set-up: which Postgres to use, migrations, and psycopg error translation."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.parse
import warnings
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pgerr

from cairn import redaction
from cairn.engine.queries import q
from cairn.errors import ConfigurationError, DatabaseError, InputValidationError, SchemaNotReadyError

ENV_URL = "CAIRN_DATABASE_URL"
ENV_HOME = "CAIRN_HOME"  # where the embedded server keeps its data


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
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        from pgserver import get_server  # type: ignore[attr-defined]  # not in its __all__

        server = get_server(pgdata, cleanup_mode=None)
        return str(server.get_uri())


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
    for entry in files("cairn").joinpath("migrations").iterdir():
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
    except psycopg.ProgrammingError as exc:  # libpq could not parse it: bad input
        raise InputValidationError(f"invalid database URL {redact(url)}: {_first_line(exc)}") from None
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {redact(url)}: {_first_line(exc)}") from None


# ---------------------------------------------------------------- errors


def _first_line(exc: BaseException) -> str:
    return redact((str(exc).strip().splitlines() or [type(exc).__name__])[0])


def translate(exc: psycopg.Error) -> Exception:
    """The one place psycopg errors become Cairn errors (messages carry no parameters)."""
    if isinstance(exc, pgerr.UndefinedTable | pgerr.InvalidSchemaName | pgerr.UndefinedFunction):
        return SchemaNotReadyError(f"the Cairn schema is missing ({_first_line(exc)}): run `cairn db migrate`")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseError(f"database connection failed: {_first_line(exc)}")
    return DatabaseError(f"database error: {type(exc).__name__}: {_first_line(exc)}")
