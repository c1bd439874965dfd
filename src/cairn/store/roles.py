"""Least-privilege Postgres roles for Cairn (``cairn db roles``).

Four roles, each a LOGIN role (a password from an environment variable, or none for
trust/peer/certificate set-ups):

=========  ==================================================================================
owner      owns the ``cairn`` schema and its tables: runs migrations (``cairn db migrate``).
worker     runs workflow and activity tasks: SELECT on every table, and exactly the writes its
           statements make (:data:`WRITES`): never DELETE on ``runs`` or ``workflow_types``,
           only INSERT on ``history`` (append-only, enforced by the database, not only by the
           code), nothing on ``schema_versions``; closed runs past their retention go through
           the one function that may remove them (:data:`DEFINER_FUNCTIONS`).
client     starts, signals, queries, cancels, terminates, resets, retries: SELECT on every
           table and its statements' writes; on ``activity_tasks`` UPDATE of only the
           heartbeat columns (:data:`COLUMN_UPDATES`: a heartbeat by task token), so it cannot
           lease an attempt, no writes to the worker-side tables (the type registry,
           breakers, rate limits), no DELETE on ``runs``.
readonly   SELECT only (dashboards, ``cairn list``/``describe``/``history``, ``cairn verify``), and not
           on :data:`SECRET_TABLES` (the task-token key).
=========  ==================================================================================

``WRITES`` is what the statements need, derived by asking Postgres:
``tests/integration/test_role_grants.py`` EXPLAINs each named statement of a role's modules
with one privilege revoked at a time (plus the functions and triggers they reach) and checks
that the result equals these grants, no more, no less.

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

from cairn.errors import InputValidationError
from cairn.options import check_identifier
from cairn.store import db

ROLE_KINDS = ("owner", "worker", "client", "readonly")
DEFAULT_NAMES = {"owner": "cairn_owner", "worker": "cairn_worker", "client": "cairn_client",
                 "readonly": "cairn_readonly"}
ALL = ("SELECT", "INSERT", "UPDATE", "DELETE")

# What tables a later migration adds get until `cairn db roles` runs again (ALTER DEFAULT
# PRIVILEGES): a working set, since this version cannot know those tables' statements.
DEFAULT_PRIVILEGES: dict[str, tuple[str, ...]] = {"worker": ALL, "client": ALL, "readonly": ("SELECT",)}
# Per role: the writes each table takes, on top of SELECT on every table. A table not named
# is read-only to the role. Exactly what the role's statements need (see the module docstring).
WRITES: dict[str, dict[str, tuple[str, ...]]] = {
    "worker": {
        "runs": ("INSERT", "UPDATE"),  # children, continue-as-new, closes; never DELETE
        "history": ("INSERT",),  # append-only
        "inbox": ("INSERT", "UPDATE", "DELETE"),
        "workflow_tasks": ("INSERT", "UPDATE", "DELETE"),
        "activity_tasks": ("INSERT", "UPDATE", "DELETE"),
        "timers": ("INSERT", "UPDATE", "DELETE"),
        "query_requests": ("UPDATE",),  # answers; the asking client deletes the row
        "updates": ("UPDATE",),  # outcomes (accepted, rejected, completed)
        "workflow_types": ("INSERT", "UPDATE"),  # registers its types; never DELETE
        "activity_types": ("INSERT", "UPDATE"),
        "workers": ("INSERT", "UPDATE", "DELETE"),  # its own row's heartbeat; maintenance removes old rows
        "breakers": ("INSERT", "UPDATE", "DELETE"),
        "breaker_probes": ("INSERT", "UPDATE", "DELETE"),
        "breaker_events": ("INSERT",),
        "rate_limits": ("INSERT", "UPDATE"),
        "rate_limit_windows": ("INSERT", "UPDATE", "DELETE"),
        "rate_limit_leases": ("INSERT", "DELETE"),
        "rate_limit_tickets": ("INSERT", "UPDATE", "DELETE"),
        "llm_stream": ("INSERT", "DELETE"),  # DELETE: the trigger clearing a closed run's chunks
        "schedules": ("INSERT", "UPDATE", "DELETE"),  # fires them (store/schedules.py, shared with the client)
        "schedule_actions": ("INSERT", "UPDATE", "DELETE"),
        # executes batches (store/batches.py: progress, outcomes, the end); INSERT because the
        # module's statements are derived whole, though only clients create batches
        "batches": ("INSERT", "UPDATE"),
        "batch_targets": ("INSERT", "UPDATE"),
        "payloads": ("INSERT",),  # large payloads, content-addressed; the purge removes them
        "run_payloads": ("INSERT",),
        # concurrency slots (0023): taken for activities it schedules, given back by the
        # triggers of the closes and outcomes it records (cairn.concurrency_admit/_release)
        "concurrency_limits": ("INSERT", "UPDATE"),
        "concurrency_waiting": ("INSERT", "DELETE"),
        "fairness_places": ("INSERT", "UPDATE", "DELETE"),  # fairness keys' last places (0025); maintenance prunes
        "retry_places": ("INSERT", "UPDATE", "DELETE"),  # keyed retries booked, placed when due (0025)
        "low_lanes": ("INSERT",),  # namespaces that queued priority 4-5 (0025)
    },
    "client": {
        "runs": ("INSERT", "UPDATE"),  # starts, closes (terminate, reset), reset marks; never DELETE
        "history": ("INSERT",),
        "inbox": ("INSERT", "DELETE"),
        "workflow_tasks": ("INSERT", "UPDATE", "DELETE"),
        # UPDATE of COLUMN_UPDATES' columns only: heartbeats by task token
        "activity_tasks": ("INSERT", "UPDATE", "DELETE"),
        "timers": ("INSERT", "DELETE"),
        "query_requests": ("INSERT", "DELETE"),
        "updates": ("INSERT",),  # requests; never their outcomes
        "llm_stream": ("DELETE",),  # the trigger clearing a closed run's chunks (terminate)
        "schedules": ("INSERT", "UPDATE", "DELETE"),  # create, pause, update, delete
        "schedule_actions": ("INSERT", "UPDATE", "DELETE"),  # trigger, backfill
        "batches": ("INSERT", "UPDATE"),  # start, cancel, and execute while waiting
        "batch_targets": ("INSERT", "UPDATE"),
        "activity_pauses": ("INSERT", "DELETE"),  # cairn pause|unpause --activity-type/--queue
        "namespaces": ("INSERT", "UPDATE"),  # retention and archive settings (the worker only reads them)
        "payloads": ("INSERT",),  # large inputs, signals, updates; the purge removes them
        "run_payloads": ("INSERT",),
        # concurrency slots (0023): starts take one, terminates give one back (triggers);
        # cairn limits set|delete
        "concurrency_limits": ("INSERT", "UPDATE", "DELETE"),
        "concurrency_waiting": ("INSERT", "DELETE"),
        "fairness_places": ("INSERT", "UPDATE"),  # a keyed start's place (0025)
        "retry_places": ("INSERT", "UPDATE"),  # a keyed retry by task token, booked (0025)
        "low_lanes": ("INSERT",),  # a start at priority 4-5 notes its namespace (0025)
    },
}

# Functions that run as the schema's owner (SECURITY DEFINER), and the roles that may call
# them: the purge removes closed runs whole, history included, which neither role may DELETE
# itself (history stays append-only to every other statement; see migration 0020).
DEFINER_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "purge_closed_runs(uuid[])": ("worker", "client"),
    # stored payloads no run links (0026): DELETE and FOR UPDATE on cairn.payloads stay the owner's
    "sweep_payloads(bytea, integer, timestamptz)": ("worker", "client"),
}

# Where a role's UPDATE is granted on some columns only: the client heartbeats an attempt by
# its task token (store/completions.py; its retry by token deletes and re-inserts the row)
# and pauses, resumes or resets one (store/pauses.py), and updates nothing else of the row:
# it cannot lease an attempt.
COLUMN_UPDATES: dict[str, dict[str, tuple[str, ...]]] = {
    "client": {"activity_tasks": ("heartbeat_details", "heartbeat_at", "heartbeat_deadline",
                                  # pause and unpause (store/pauses.py): hold and free it; fresh
                                  # attempts are a delete and a re-insert, as a retry by token
                                  "paused", "pause",
                                  # a slot a terminate gives back lets a waiting activity go
                                  # (cairn.concurrency_release, 0023)
                                  "available_at")},
}


@dataclass
class RolePlan:
    """The names of the four roles and the environment variables holding their passwords."""

    names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NAMES))
    password_envs: dict[str, str | None] = field(default_factory=dict)

    def validate(self) -> None:
        for kind in ROLE_KINDS:
            name = check_identifier(self.names[kind], f"the {kind} role name", max_length=63)
            if name.startswith("pg_"):
                raise InputValidationError(f"the {kind} role name {name!r} is reserved (pg_ prefix)")
        if len(set(self.names.values())) != len(ROLE_KINDS):
            raise InputValidationError("the four role names must differ")
        for kind, env in self.password_envs.items():
            if env is not None and env not in os.environ:
                raise InputValidationError(f"--{kind}-password-env names {env!r}, which is not set")


# Tables only the roles that use them may read: the key that signs task tokens (the worker
# signs, the client checks), not dashboards.
SECRET_TABLES = frozenset({"activity_token_keys"})


def privileges(kind: str, table: str) -> tuple[str, ...]:
    """The table privileges a role kind gets on ``cairn.<table>``."""
    if kind == "readonly" and table in SECRET_TABLES:
        return ()
    return ("SELECT", *WRITES.get(kind, {}).get(table, ()))


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
                    report["tables"].setdefault(table, {})[kind] = list(privs)
                    if not privs:
                        continue
                    columns = COLUMN_UPDATES.get(kind, {}).get(table)
                    conn.execute(sql.SQL("GRANT {} ON cairn.{} TO {}").format(
                        sql.SQL(", ").join(
                            sql.SQL("UPDATE ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
                            if p == "UPDATE" and columns else sql.SQL(p) for p in privs),
                        sql.Identifier(table), role))
                if kind != "readonly":  # identity columns (inbox ids, breaker events)
                    conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA cairn TO {}").format(role))
                # Tables a later migration (run by the owner) creates: the role's default.
                conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA cairn GRANT {} ON TABLES TO {}")
                             .format(owner, sql.SQL(", ").join(sql.SQL(p) for p in DEFAULT_PRIVILEGES[kind]), role))
                if kind != "readonly":
                    conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA cairn "
                                         "GRANT USAGE, SELECT ON SEQUENCES TO {}").format(owner, role))
            for function, kinds in DEFINER_FUNCTIONS.items():
                fn = sql.SQL("cairn.") + sql.SQL(function)  # a fixed signature from this module
                conn.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(fn, owner))
                conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(fn))
                for kind in ROLE_KINDS[1:]:
                    verb = ("GRANT EXECUTE ON FUNCTION {} TO {}" if kind in kinds
                            else "REVOKE ALL ON FUNCTION {} FROM {}")
                    conn.execute(sql.SQL(verb).format(fn, sql.Identifier(plan.names[kind])))
                report.setdefault("functions", {})[function] = list(kinds)
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
