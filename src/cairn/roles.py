"""Least-privilege Postgres roles for Cairn (``cairn db roles``).

Four roles, each a LOGIN role (a password from an environment variable, or none for
trust/peer/certificate set-ups):

=========  ==================================================================================
owner      owns the ``cairn`` schema and its tables: runs migrations (``cairn db migrate``).
worker     runs workflow and activity tasks: SELECT/INSERT/UPDATE/DELETE on the engine's tables,
           but on ``history`` only SELECT and INSERT (history is append-only, enforced by the
           database, not only by the code), and ``schema_versions`` read-only.
client     starts, signals, queries, cancels, terminates, resets: like the worker, minus
           UPDATE on ``activity_tasks`` (it cannot lease or complete an activity attempt) and
           minus writes to the worker-side tables (the type registry, breakers, rate limits).
readonly   SELECT only (dashboards, ``cairn list``/``describe``/``history``, ``cairn verify``).
=========  ==================================================================================

Tables that a later migration adds get the role's default (``DEFAULT_PRIVILEGES``) until
``cairn db roles`` runs again; ``ALTER DEFAULT PRIVILEGES`` gives tables the owner creates a
working set of grants in the meantime. Re-run ``cairn db roles`` after every migration: it
revokes and re-grants, so it is idempotent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cairn import db
from cairn.errors import InputValidationError

ROLE_KINDS = ("owner", "worker", "client", "readonly")
DEFAULT_NAMES = {"owner": "cairn_owner", "worker": "cairn_worker", "client": "cairn_client",
                 "readonly": "cairn_readonly"}
ALL = ("SELECT", "INSERT", "UPDATE", "DELETE")

# Per role: the privileges on every table of the schema, then per-table overrides.
DEFAULT_PRIVILEGES: dict[str, tuple[str, ...]] = {"worker": ALL, "client": ALL, "readonly": ("SELECT",)}
TABLE_PRIVILEGES: dict[str, dict[str, tuple[str, ...]]] = {
    "worker": {"history": ("SELECT", "INSERT"), "schema_versions": ("SELECT",)},
    "client": {
        "history": ("SELECT", "INSERT"),  # starts and resets append; nobody rewrites
        "activity_tasks": ("SELECT", "INSERT", "DELETE"),  # no UPDATE: cannot lease an attempt
        "schema_versions": ("SELECT",),
        "workflow_types": ("SELECT",), "activity_types": ("SELECT",),  # the registry is filled by workers
        "breakers": ("SELECT",), "breaker_probes": ("SELECT",), "breaker_events": ("SELECT",),
        "rate_limits": ("SELECT",), "rate_limit_windows": ("SELECT",), "rate_limit_leases": ("SELECT",),
    },
}


@dataclass
class RolePlan:
    """The names of the four roles and the environment variables holding their passwords."""

    names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NAMES))
    password_envs: dict[str, str | None] = field(default_factory=dict)

    def validate(self) -> None:
        from cairn.common import check_identifier

        for kind in ROLE_KINDS:
            name = check_identifier(self.names[kind], f"the {kind} role name", max_length=63)
            if name.startswith("pg_"):
                raise InputValidationError(f"the {kind} role name {name!r} is reserved (pg_ prefix)")
        if len(set(self.names.values())) != len(ROLE_KINDS):
            raise InputValidationError("the four role names must differ")
        for kind, env in self.password_envs.items():
            if env is not None and env not in os.environ:
                raise InputValidationError(f"--{kind}-password-env names {env!r}, which is not set")


def privileges(kind: str, table: str) -> tuple[str, ...]:
    """The table privileges a role kind gets on ``cairn.<table>``."""
    return TABLE_PRIVILEGES.get(kind, {}).get(table, DEFAULT_PRIVILEGES[kind])


def create_roles(url: str, plan: RolePlan) -> dict[str, Any]:
    """Creates (or updates) the roles and grants; returns what was done, without passwords.

    Run it as a superuser or a role with CREATEROLE that owns the schema, after ``migrate``.
    """
    plan.validate()
    report: dict[str, Any] = {"roles": {}, "tables": {}}
    with db.connect_sync(url) as conn, conn.transaction():
        try:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'cairn' ORDER BY tablename").fetchall()]
            if not tables:
                raise InputValidationError("the cairn schema has no tables: run `cairn db migrate` first")
            for kind in ROLE_KINDS:
                _ensure_role(conn, plan.names[kind], plan.password_envs.get(kind))
                env = plan.password_envs.get(kind)
                report["roles"][kind] = {"name": plan.names[kind], "password": f"from ${env}" if env else "none"}
            owner = sql.Identifier(plan.names["owner"])
            database = sql.Identifier(conn.info.dbname)
            conn.execute(sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(database, owner))
            conn.execute(sql.SQL("ALTER SCHEMA cairn OWNER TO {}").format(owner))
            for table in tables:
                conn.execute(sql.SQL("ALTER TABLE cairn.{} OWNER TO {}").format(sql.Identifier(table), owner))
            for kind in ("worker", "client", "readonly"):
                role = sql.Identifier(plan.names[kind])
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA cairn TO {}").format(role))
                conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA cairn FROM {}").format(role))
                for table in tables:
                    privs = privileges(kind, table)
                    conn.execute(sql.SQL("GRANT {} ON cairn.{} TO {}").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in privs), sql.Identifier(table), role))
                    report["tables"].setdefault(table, {})[kind] = list(privs)
                if kind != "readonly":  # identity columns (inbox ids, breaker events)
                    conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA cairn TO {}").format(role))
                # Tables a later migration (run by the owner) creates: the role's default.
                conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA cairn GRANT {} ON TABLES TO {}")
                             .format(owner, sql.SQL(", ").join(sql.SQL(p) for p in DEFAULT_PRIVILEGES[kind]), role))
                if kind != "readonly":
                    conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA cairn "
                                         "GRANT USAGE, SELECT ON SEQUENCES TO {}").format(owner, role))
            # Nobody else writes: PUBLIC has no rights in the schema.
            conn.execute("REVOKE ALL ON SCHEMA cairn FROM PUBLIC")
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InputValidationError(
                f"not allowed to create roles or grants ({db.redact(str(exc)).strip()}): "
                "run `cairn db roles` as a superuser or the schema's owner with CREATEROLE") from None
        except psycopg.Error as exc:
            raise db.translate(exc) from None
    return report


def _ensure_role(conn: psycopg.Connection[Any], name: str, password_env: str | None) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    if password_env:
        # The password comes from the environment, never the command line; it is sent as a
        # literal (ALTER ROLE takes no parameters) and never logged or echoed.
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(os.environ[password_env])))
    else:
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN").format(sql.Identifier(name)))
