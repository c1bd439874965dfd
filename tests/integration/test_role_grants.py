"""The worker and client roles get exactly the table privileges their statements need
(issue 15, A3: both could ``DELETE FROM cairn.runs``, the worker ``workflow_types``, and no
statement does either).

What a role needs is derived, not listed: the named statements its modules send (found in
their source), each checked by Postgres itself — ``EXPLAIN`` checks a statement's table
privileges without running it, so a statement's needs are the privileges whose revocation
makes its ``EXPLAIN`` fail — plus what the functions it calls and the triggers it fires
do. Then the roles run a real workload and are refused what they must not do."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import cairn
from cairn import ApplicationError, Client, RetryPolicy, WorkflowCancelled, activity, workflow
from cairn import breakers as br
from cairn.llm import ChatRequest, chat, configure_providers
from cairn.llm import fake as f
from cairn.llm import providers as providers_mod
from cairn.store import roles
from cairn.store.sql import queries
from support import running_worker, wait_until

from .test_security import as_role, attempt, role_set

SRC = Path(cairn.__file__).parent
# The modules each role's processes run statements from (the web view, `cairn list` and
# `cairn verify` read only; any role may run them).
MODULES = {
    "worker": ["store/tasks.py", "store/activities.py", "store/maintenance.py", "store/lifecycle.py", "store/runs.py",
               "store/sql.py", "workflow.py", "store/breakers.py", "store/ratelimits.py", "store/llm.py",
               "store/schedules.py", "store/workers.py", "store/batches.py", "store/retention.py",
               "store/payloads.py"],
    "client": ["store/runs.py", "store/messages.py", "store/operators.py", "store/lifecycle.py",
               "store/completions.py", "store/schedules.py", "store/batches.py", "store/pauses.py",
               "store/retention.py", "store/namespaces.py", "store/payloads.py",
               "store/limits.py"],
}
# store/db.py: both check the schema version (read only); migrating is the owner's.
SCHEMA_CHECK = ("applied_versions", "versions_table_exists")
# Modules with statements that neither role runs: the owner's migrations, `cairn verify`,
# the time-skipping test environment's reads (cairn.testing).
NEITHER = ["store/db.py", "store/verify.py", "store/clock.py"]
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
TRIGGER_EVENTS = {4: "INSERT", 8: "DELETE", 16: "UPDATE"}  # pg_trigger.tgtype bits


def statements_of(kind: str) -> dict[str, str]:
    """The named statements whose names appear (quoted) in the role's modules."""
    named = queries()
    text = "\n".join((SRC / m).read_text(encoding="utf-8") for m in MODULES[kind])
    found = {n: s for n, s in named.items() if f'"{n}"' in text}
    return {**found, **{n: named[n] for n in SCHEMA_CHECK}}


def body_needs(body: str) -> set[tuple[str, str]]:
    """The table privileges a PL/pgSQL body's statements take (functions and triggers run
    with the caller's privileges; EXPLAIN does not look inside them)."""
    needs = set()
    for table in re.findall(r"(?:FROM|JOIN|USING)\s+cairn\.(\w+)", body):
        needs.add((table, "SELECT"))
    for table in re.findall(r"INSERT INTO cairn\.(\w+)", body):
        needs.add((table, "INSERT"))
    for table in re.findall(r"INSERT INTO cairn\.(\w+)[^;]*?ON CONFLICT[^;]*?DO UPDATE", body, re.S):
        needs |= {(table, "UPDATE"), (table, "SELECT")}
    for table in re.findall(r"UPDATE cairn\.(\w+)", body):
        needs |= {(table, "UPDATE"), (table, "SELECT")}
    for table in re.findall(r"DELETE FROM cairn\.(\w+)", body):
        needs |= {(table, "DELETE"), (table, "SELECT")}
    return needs


def function_needs(name: str, functions: dict[str, str], seen: set[str] | None = None) -> set[tuple[str, str]]:
    """What a function's body takes, and the bodies of the functions it calls, down to the
    last (0023's nest: the start's placement calls the slot's admission)."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    needs = body_needs(functions[name])
    for called in set(re.findall(r"cairn\.(\w+)\(", functions[name])) & set(functions):
        needs |= function_needs(called, functions, seen)
    return needs


def derive(url: str, kind: str) -> dict[str, set[str]]:
    """Per table, the privileges the role's statements need (see the module docstring)."""
    probe = f"cairn_t_probe_{uuid.uuid4().hex[:8]}"
    needs: set[tuple[str, str]] = set()
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'cairn'")]
        # SECURITY DEFINER functions run with their owner's privileges, not the caller's:
        # the caller needs EXECUTE (roles.DEFINER_FUNCTIONS), not what their bodies do.
        functions = dict(conn.execute(
            "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'cairn' AND NOT p.prosecdef").fetchall())
        triggers = conn.execute(
            "SELECT c.relname, t.tgtype, p.prosrc FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'cairn' AND NOT t.tgisinternal").fetchall()
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(probe)))
        try:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA cairn TO {}").format(sql.Identifier(probe)))
            # EXECUTE is granted by function (roles.DEFINER_FUNCTIONS); here only tables are probed.
            conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn TO {}").format(sql.Identifier(probe)))
            for name, statement in statements_of(kind).items():
                text = sql.SQL(statement).format(where=sql.SQL("true")) if "{where}" in statement else statement
                params = dict.fromkeys(re.findall(r"%\((\w+)\)s", statement))
                mentioned = set(re.findall(r"cairn\.(\w+)", statement)) & set(tables)
                for table in mentioned:
                    for privilege in PRIVILEGES:
                        if _explain_without(conn, probe, text, params, table, privilege, tables):
                            needs.add((table, privilege))
                for function in set(re.findall(r"cairn\.(\w+)\(", statement)) & set(functions):
                    needs |= function_needs(function, functions)
                assert _explain_without(conn, probe, text, params, None, None, tables) is False, name
            for table, tgtype, body in triggers:  # fired by what the role does
                if any((table, event) in needs for bit, event in TRIGGER_EVENTS.items() if tgtype & bit):
                    needs |= body_needs(body)
                    for called in set(re.findall(r"cairn\.(\w+)\(", body)) & set(functions):
                        needs |= function_needs(called, functions)
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(probe)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(probe)))
    out: dict[str, set[str]] = {t: set() for t in tables}
    for table, privilege in needs:
        out[table].add(privilege)
    return out


def _explain_without(conn: psycopg.Connection[Any], probe: str, text: Any, params: dict[str, None],
                     table: str | None, privilege: str | None, tables: list[str]) -> bool:
    """Whether EXPLAIN of the statement is refused to a role with every table privilege but
    ``privilege`` on ``table`` (nothing runs; the grants are rolled back)."""
    role = sql.Identifier(probe)
    try:
        with conn.transaction(force_rollback=True):
            for t in tables:
                conn.execute(sql.SQL("GRANT ALL ON cairn.{} TO {}").format(sql.Identifier(t), role))
            if table is not None:
                conn.execute(sql.SQL("REVOKE {} ON cairn.{} FROM {}").format(
                    sql.SQL(privilege or ""), sql.Identifier(table), role))
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
            conn.execute(sql.SQL("EXPLAIN ") + (text if isinstance(text, sql.Composed) else sql.SQL(text)), params)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


@pytest.fixture(scope="module")
def derived(pg_admin_url: str, template_db: str) -> Iterator[dict[str, dict[str, set[str]]]]:
    """What each role needs, derived once on a scratch copy of the migrated schema."""
    name = f"cairn_grants_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template_db)))
    try:
        yield {kind: derive(make_conninfo(pg_admin_url, dbname=name), kind) for kind in MODULES}
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_every_module_with_statements_has_a_role():
    """A new module sending named statements must say whose they are (else its needs
    would go unseen)."""
    named = queries()
    sending = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if any(f'"{n}"' in p.read_text(encoding="utf-8") for n in named)}
    assert sending == {m for ms in MODULES.values() for m in ms} | set(NEITHER)


@pytest.mark.parametrize("kind", list(MODULES))
def test_grants_are_what_the_statements_need(derived, kind):
    """Every table is readable by every role (list, describe, verify run as any of them);
    the writes granted are exactly the writes derived."""
    granted = {t: set(roles.privileges(kind, t)) for t in derived[kind]}
    assert granted == {t: {"SELECT"} | needs for t, needs in derived[kind].items()}
    assert "DELETE" not in granted["runs"]


# ---------------------------------------------------------------- the roles at work

_failures: dict[str, int] = {}


@activity.defn
async def flaky_step(label: str) -> str:
    _failures[label] = _failures.get(label, 0) + 1
    if _failures[label] == 1:  # the first attempt fails: a retry is rescheduled
        raise ApplicationError("transient")
    return label.upper()


@workflow.defn
async def grants_child(label: str) -> str:
    return f"child {label}"


@workflow.defn
async def grants_flow(label: str, carried: str | None = None) -> dict[str, object]:
    """Waits for "go", then an activity retried once, a timer, a child, and one continue-as-new."""
    workflow.set_query_handler("label", lambda: label)
    go = carried or await workflow.wait_signal("go")
    workflow.upsert_search_attributes({"customer": label})
    step = await workflow.execute_activity(flaky_step, label, start_to_close_timeout=10,
                                           retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)))
    await workflow.sleep(0.05)
    child = await workflow.execute_child_workflow(grants_child, label, id=f"{label}-child-{carried is None}")
    if carried is None:
        workflow.continue_as_new(label, go)
    return {"step": step, "child": child, "go": go}


@workflow.defn
async def grants_chat(text: str) -> str:
    """An LLM call through a breaker and a fleet rate limit, streamed, throttled once."""
    request = ChatRequest(model="fake-model", messages=[{"role": "user", "content": text}], max_tokens=20)
    reply = await chat(request, stream=True, throttle_budget=30,
                       retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)))
    return reply.text


@pytest.fixture
def llm(fake_llm):
    configure_providers([fake_llm.provider_config(rpm=600, breaker=br.BreakerConfig(
        window="count", window_size=4, minimum_calls=4, recovery_timeout=30))])
    fake_llm.script([f.rate_limited("0.2")], default=f.ok("summarised"))
    yield fake_llm
    providers_mod._registry = None


async def test_roles_run_their_workload_and_nothing_more(db_url, sql, llm):
    with role_set(db_url) as names:
        await asyncio.to_thread(roles.create_roles, db_url, roles.RolePlan(names=names))
        worker_url, client_url = as_role(db_url, names["worker"]), as_role(db_url, names["client"])
        async with running_worker(worker_url, workflows=[grants_flow, grants_child, grants_chat],
                                  activities=[flaky_step]), await Client.connect(client_url) as client:
            assert await (await client.start(grants_chat, "the cat sat", id="llm")).result(timeout=30) == "summarised"
            a = await client.start(grants_flow, "a", id="a", search_attributes={"customer": "x"})
            # (a query before the run's first workflow task finds no handler yet: wait for it)
            await wait_until(lambda: sql("SELECT 1 FROM cairn.history WHERE run_id = %s AND type = "
                                         "'WorkflowTaskStarted'", (a.run_id,)), what="a's first task")
            assert await a.query("label", timeout=20) == "a"
            await a.signal("go", "yes")
            assert (await a.result(timeout=30))["go"] == "yes"
            assert [r["workflow_id"] for r in await client.list(where='customer = "a"')] == ["a", "a"]  # 2 runs
            described = await client.get_handle("a").describe()
            assert described.continued_from is not None
            assert await client.get_handle("a").history()
            reset = await client.get_handle("a").reset(to_last_task=True)
            assert (await reset.result(timeout=30))["go"] == "yes"
            b = await client.start(grants_flow, "b", id="b")
            await b.cancel("no longer needed")
            with pytest.raises(WorkflowCancelled):
                await b.result(timeout=30)
            c = await client.start(grants_flow, "c", id="c")
            await c.terminate("stop")
            retried = await client.get_handle("c").retry()
            await retried.signal("go", "again")
            assert (await retried.result(timeout=30))["go"] == "again"
            # The client purges closed runs through the one function that may (history included).
            assert (await client.get_namespace_handle().purge(where="WorkflowId = 'b'")).runs == 1
            assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s", (b.run_id,)) == [(0,)]
        statuses = dict(sql("SELECT status, count(*) FROM cairn.runs GROUP BY status"))
        assert statuses["completed"] >= 4
        assert statuses["terminated"] >= 1
        assert "cancelled" not in statuses  # b, purged
        refused = {
            ("worker", "DELETE FROM cairn.history"), ("client", "DELETE FROM cairn.history"),
            ("worker", "UPDATE cairn.namespaces SET retention = NULL"),
            ("readonly", "SELECT * FROM cairn.purge_closed_runs('{}')"),
            ("worker", "DELETE FROM cairn.runs"), ("worker", "DELETE FROM cairn.workflow_types"),
            ("worker", "DELETE FROM cairn.query_requests"), ("worker", "UPDATE cairn.history SET data = data"),
            ("client", "DELETE FROM cairn.runs"), ("client", "DELETE FROM cairn.workflow_types"),
            ("client", "UPDATE cairn.activity_tasks SET attempt = attempt"), ("client", "DELETE FROM cairn.breakers"),
            ("client", "DELETE FROM cairn.rate_limit_windows"),
        }
        assert {key: attempt(as_role(db_url, names[key[0]]), key[1]) for key in refused} == dict.fromkeys(
            refused, "denied")
        assert sql("SELECT count(*) FROM cairn.workflow_types")[0][0] == 3
        assert sql("SELECT count(*) FROM cairn.breaker_events")[0][0] >= 1  # the 429 reached the breaker
        assert sql("SELECT count(*) FROM cairn.rate_limits")[0][0] == 1
