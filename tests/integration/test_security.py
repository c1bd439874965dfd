"""Security: no pickle, least-privilege roles (tested by trying), namespaces isolating
tenants in every claim, the durability check at start-up, idle-in-transaction timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import cairn
from cairn import Client, Worker, activity, workflow
from cairn.cli import main as cli
from cairn.errors import ConfigurationError
from cairn.store import durability, roles
from support import events

# ---------------------------------------------------------------- no pickle


def test_no_pickle_marshal_or_shelve_anywhere():
    """Payloads are JSON (pydantic + jsonb): nothing in the package can unpickle."""
    root = Path(cairn.__file__).parent
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|marshal|shelve|dill|cloudpickle)\b"
                         r"|\b(c?pickle|marshal|shelve)\.(loads?|dumps?|Unpickler|open)\b")
    offenders = []
    for path in root.rglob("*.py"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []
    assert list(root.rglob("*.sql"))  # the scan saw the package (sanity)


@workflow.defn
async def tenant_flow(label: str) -> dict[str, Any]:
    workflow.set_query_handler("whoami", lambda: workflow.info().namespace)
    got = await workflow.execute_activity(tenant_step, label, start_to_close_timeout=10)
    await workflow.wait_signal("go")
    return {"namespace": workflow.info().namespace, "activity": got}


@activity.defn
async def tenant_step(label: str) -> dict[str, str]:
    return {"label": label, "worker": activity.info().worker}


async def test_payloads_are_json_in_the_database(client, start_worker, sql):
    await start_worker(workflows=[tenant_flow], activities=[tenant_step])
    handle = await client.start(tenant_flow, "json", id="json")
    await handle.signal("go")
    await handle.result(timeout=20)
    kinds = sql("SELECT DISTINCT jsonb_typeof(data) FROM cairn.history WHERE run_id = %s", (handle.run_id,))
    assert kinds == [("object",)]
    column_types = sql("SELECT DISTINCT data_type FROM information_schema.columns WHERE table_schema = 'cairn' "
                       "AND column_name IN ('data', 'input', 'args', 'answer', 'payload')")
    assert set(column_types) == {("jsonb",)}
    # Stored payloads (0022) are JSON too, compressed: the only encoding the schema admits.
    assert sql("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'payloads_encoding'") == [
        ("CHECK ((encoding = 'json+zlib'::text))",)]


# ---------------------------------------------------------------- namespaces


async def test_namespaces_isolate_tenants(db_url, sql):
    """Same queue, same workflow ids, a worker per namespace: each runs only its own."""
    ids = [f"order-{i}" for i in range(6)]
    async with Worker(db_url, workflows=[tenant_flow], activities=[tenant_step], namespace="alpha",
                      identity="worker-alpha", poll_interval=0.2, lease_seconds=5) as wa, \
            Worker(db_url, workflows=[tenant_flow], activities=[tenant_step], namespace="beta",
                   identity="worker-beta", poll_interval=0.2, lease_seconds=5) as wb:
        assert (wa.namespace, wb.namespace) == ("alpha", "beta")
        clients = {ns: await Client.connect(db_url, namespace=ns) for ns in ("alpha", "beta")}
        try:
            handles = {(ns, wid): await c.start(tenant_flow, f"{ns}:{wid}", id=wid)
                       for ns, c in clients.items() for wid in ids}
            for (ns, _), h in handles.items():  # a query is answered by the run's own namespace
                assert await h.query("whoami", timeout=20) == ns
            for h in handles.values():
                await h.signal("go")
            results = {k: await h.result(timeout=30) for k, h in handles.items()}
        finally:
            for c in clients.values():
                await c.close()
    for (ns, wid), out in results.items():
        assert out == {"namespace": ns, "activity": {"label": f"{ns}:{wid}", "worker": f"worker-{ns}"}}
    # From history: every workflow task of a run was taken by its namespace's worker.
    rows = sql("SELECT r.namespace, h.data ->> 'worker' FROM cairn.history h JOIN cairn.runs r USING (run_id) "
               "WHERE h.type = 'WorkflowTaskStarted'")
    assert rows
    assert {(ns, w) for ns, w in rows} == {("alpha", "worker-alpha"), ("beta", "worker-beta")}
    assert sql("SELECT count(*) FROM cairn.runs")[0][0] == 12
    assert sql("SELECT count(DISTINCT workflow_id) FROM cairn.runs")[0][0] == 6


async def test_a_worker_never_claims_another_namespaces_tasks(db_url, sql):
    """Work queued in namespace beta while only alpha's worker runs stays queued."""
    async with await Client.connect(db_url, namespace="beta") as beta:
        handle = await beta.start(tenant_flow, "b", id="same")
        async with Worker(db_url, workflows=[tenant_flow], activities=[tenant_step], namespace="alpha",
                          identity="worker-alpha", poll_interval=0.1) as wa:
            await wa.run_workflow_task()
            for _ in range(5):
                assert await wa.run_workflow_task() is False
            await asyncio.sleep(0.5)
        assert [t for _, t, _ in events(sql, handle.run_id)] == ["WorkflowStarted"]
        assert sql("SELECT namespace FROM cairn.workflow_tasks WHERE run_id = %s", (handle.run_id,)) == [("beta",)]


def test_every_queue_insert_carries_the_namespace():
    """Guards merges: every INSERT into a claimed table names the namespace column (in the
    named queries and in the functions the migrations define)."""
    root = Path(cairn.__file__).parent
    sql = [root / "store" / "queries.sql", *sorted(root.glob("store/migrations/*.sql"))]
    text = "\n".join(p.read_text() for p in sql)
    inserts = re.findall(r"INSERT INTO cairn\.(workflow_tasks|activity_tasks|query_requests)\s*\(([^)]*)\)", text)
    assert len(inserts) >= 13
    missing = [(t, cols) for t, cols in inserts if "namespace" not in cols]
    assert missing == []


def test_claims_use_the_namespace_index(db_url, sql):
    """The claim is still one ordered scan of the (namespace, queue, type, available_at) index,
    in either priority lane, planned as a worker's session plans it (generic: the lane is a
    parameter; a custom plan would fold `(priority > 3) = false` into `priority <= 3`)."""
    from psycopg import sql as pgsql

    from cairn.store.sql import _positional
    from cairn.worker import WORKER_CONNECTION_OPTIONS

    values = {"namespace": "a", "queues": ["default"], "limit": 8, "now": None, "worker": "w", "lease": 5}
    with psycopg.connect(db_url, autocommit=True, options=WORKER_CONNECTION_OPTIONS) as conn:
        # On empty tables a planner may prefer a bitmap scan and a sort (seen on the embedded
        # PostgreSQL 16): rule both cheap alternatives out, so the plan shows whether the
        # index itself gives the claim its order.
        conn.execute("SET enable_bitmapscan = off")
        for name, types, index in (("claim_workflow_task", ["w"], "workflow_tasks_ready"),
                                   ("claim_activity_tasks", ["a"], "activity_tasks_ready")):
            text, names = _positional(name)
            conn.execute(f"PREPARE p_{name} AS {text}")
            for low in (False, True):
                args = {**values, "types": types, "low": low}
                plan = "\n".join(r[0] for r in conn.execute(pgsql.SQL("EXPLAIN EXECUTE {}({})").format(
                    pgsql.Identifier(f"p_{name}"), pgsql.SQL(", ").join(pgsql.Literal(args[n]) for n in names))))
                assert index in plan, plan
                assert "(priority > 3) = $" in plan, plan
                assert "Sort" not in plan, plan


# ---------------------------------------------------------------- least-privilege roles


@contextlib.contextmanager
def role_set(db_url: str) -> Iterator[dict[str, str]]:
    """`cairn db roles` with unique names (roles are server-wide); dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {kind: f"cairn_t_{kind}_{suffix}" for kind in roles.ROLE_KINDS}
    try:
        yield names
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            admin = conn.execute("SELECT current_user").fetchone()[0]
            for name in names.values():
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                    conn.execute(f'REASSIGN OWNED BY "{name}" TO "{admin}"')
                    conn.execute(f'DROP OWNED BY "{name}"')
        with psycopg.connect(db_url, autocommit=True) as conn:
            for name in names.values():
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def as_role(db_url: str, name: str) -> str:
    params = conninfo_to_dict(db_url)
    params["user"] = name
    params.pop("password", None)
    return make_conninfo(**params)


def attempt(url: str, statement: str) -> str:
    """Runs a statement; 'ok' or the SQLSTATE class name of its error."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(statement)
            return "ok"
        except psycopg.errors.InsufficientPrivilege:
            return "denied"


async def test_roles_are_least_privilege_and_run_a_workflow(db_url, sql):
    with role_set(db_url) as names:
        ran = await asyncio.to_thread(CliRunner().invoke, cli, [
            "--database-url", db_url, "db", "roles", "--json",
            *[arg for kind in roles.ROLE_KINDS for arg in (f"--{kind}", names[kind])]])
        assert ran.exit_code == 0, ran.stderr
        # Idempotent: a second run succeeds too (re-run it after each migration).
        ran = await asyncio.to_thread(CliRunner().invoke, cli, [
            "--database-url", db_url, "db", "roles",
            *[arg for kind in roles.ROLE_KINDS for arg in (f"--{kind}", names[kind])]])
        assert ran.exit_code == 0, ran.stderr
        worker_url, client_url = as_role(db_url, names["worker"]), as_role(db_url, names["client"])
        readonly_url, owner_url = as_role(db_url, names["readonly"]), as_role(db_url, names["owner"])

        # A real workflow end to end, the worker and the client each under their own role.
        async with Worker(worker_url, workflows=[tenant_flow], activities=[tenant_step], poll_interval=0.2), \
                await Client.connect(client_url) as client:
            handle = await client.start(tenant_flow, "roles", id="roles")
            await handle.signal("go")
            assert (await handle.result(timeout=30))["activity"]["label"] == "roles"
            await client.start(tenant_flow, "second", id="second")
            await client.get_handle("second").terminate("done")
        # The readonly role reads (cairn list) and nothing else.
        async with await Client.connect(readonly_url) as ro:
            assert len(await ro.list()) == 2

        tried = {
            ("worker", "UPDATE cairn.history SET data = '{}'"): "denied",
            ("worker", "DELETE FROM cairn.history"): "denied",
            ("worker", "TRUNCATE cairn.history"): "denied",
            ("worker", "SELECT count(*) FROM cairn.history"): "ok",
            ("worker", "UPDATE cairn.runs SET queue = queue WHERE false"): "ok",
            ("worker", "DELETE FROM cairn.schema_versions"): "denied",
            ("worker", "DROP TABLE cairn.inbox"): "denied",
            ("client", "UPDATE cairn.history SET data = '{}'"): "denied",
            ("client", "DELETE FROM cairn.history"): "denied",
            ("client", "UPDATE cairn.activity_tasks SET lease_owner = 'me' WHERE false"): "denied",
            ("client", "INSERT INTO cairn.workflow_types (queue, name, input_schema) VALUES ('q', 'x', '{}')"):
                "denied",
            ("client", "DELETE FROM cairn.breakers"): "denied",
            ("client", "SELECT count(*) FROM cairn.runs"): "ok",
            ("readonly", "SELECT count(*) FROM cairn.history"): "ok",
            ("readonly", "INSERT INTO cairn.inbox (run_id, type, data) VALUES (gen_random_uuid(), 'x', '{}')"):
                "denied",
            ("readonly", "UPDATE cairn.runs SET status = status"): "denied",
            ("readonly", "DELETE FROM cairn.runs"): "denied",
            ("owner", "CREATE TABLE cairn.owner_can_migrate (x int)"): "ok",
        }
        got = {key: attempt(as_role(db_url, names[key[0]]), key[1]) for key in tried}
        assert got == tried
        # The owner runs migrations (nothing pending: the lock, the versions table).
        from cairn.store import db

        assert db.migrate(owner_url) == []
        assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s", (handle.run_id,))[0][0] > 5


async def test_roles_bad_input(db_url, sql):
    for args, fragment in [
        (("--worker", "cairn_owner"), "must differ"),
        (("--worker", "pg_evil"), "reserved"),
        (("--client", "a\nb"), "control character"),
        (("--worker-password-env", "CAIRN_TEST_NO_SUCH_VAR"), "not set"),
    ]:
        ran = await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", db_url, "db", "roles", *args])
        assert ran.exit_code == 2, ran.stderr
        assert fragment in ran.stderr


async def test_roles_password_from_env_never_printed(db_url):
    with role_set(db_url) as names:
        secret = "pw_" + uuid.uuid4().hex
        ran = await asyncio.to_thread(CliRunner(env={"CAIRN_T_WORKER_PW": secret}).invoke, cli, [
            "--database-url", db_url, "db", "roles", "--worker-password-env", "CAIRN_T_WORKER_PW",
            *[arg for kind in roles.ROLE_KINDS for arg in (f"--{kind}", names[kind])]])
        assert ran.exit_code == 0, ran.stderr
        assert secret not in ran.stdout + ran.stderr
        assert "from $CAIRN_T_WORKER_PW" in ran.stdout
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s",
                               (names["worker"],)).fetchone()
        assert row == (True,)


# ---------------------------------------------------------------- durability and session settings


def _settings_of(url: str, options: str = "") -> dict[str, str]:
    with psycopg.connect(url, autocommit=True, options=options) as conn:
        row = conn.execute(durability.DURABILITY_SQL).fetchone()
    return {"fsync": row[0], "synchronous_commit": row[1]}


async def test_synchronous_commit_off_is_refused_unless_allowed(db_url, monkeypatch):
    # A database-level default (this test's own database; the server is not touched).
    dbname = conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')
    monkeypatch.delenv(durability.ENV_UNSAFE_DURABILITY, raising=False)
    with pytest.raises(ConfigurationError, match="synchronous_commit=off"):
        await Client.connect(db_url)
    with pytest.raises(ConfigurationError, match="synchronous_commit=off"):
        async with Worker(db_url, workflows=[tenant_flow]):
            pass
    ran = await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", db_url, "list"])
    assert ran.exit_code == 1
    assert "CAIRN_ALLOW_UNSAFE_DURABILITY" in ran.stderr
    ran = await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", db_url, "--unsafe-durability", "list"])
    assert ran.exit_code == 0, ran.stderr
    monkeypatch.setenv(durability.ENV_UNSAFE_DURABILITY, "1")
    # The client's sessions still commit synchronously: its own option wins.
    async with await Client.connect(db_url) as client, client.pool.connection() as c:
        assert (await (await c.execute("SHOW synchronous_commit")).fetchone())[0] == "on"


def test_durability_problems():
    assert durability.durability_problems({"fsync": "on", "synchronous_commit": "on"}) == []
    assert durability.durability_problems({"fsync": "on", "synchronous_commit": "local"}) == []
    assert len(durability.durability_problems({"fsync": "off", "synchronous_commit": "off"})) == 2


@pytest.fixture(scope="module")
def fsync_off_server() -> Iterator[str]:
    """A private Postgres (pgserver, our own data directory) with fsync=off: the shared
    server is never touched. fsync is a reload-time setting, so ALTER SYSTEM + reload."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="cairn-fsync-off-")) / "pgdata",
                                     cleanup_mode="delete")
    try:
        url = str(server.get_uri())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("SELECT pg_reload_conf()")
        yield url
    finally:
        server.cleanup()


async def test_fsync_off_server_is_refused(fsync_off_server, monkeypatch):
    url = fsync_off_server
    assert _settings_of(url)["fsync"] == "off"
    monkeypatch.delenv(durability.ENV_UNSAFE_DURABILITY, raising=False)
    with pytest.raises(ConfigurationError, match="fsync=off"):
        await Client.connect(url, check_schema=True)
    with pytest.raises(ConfigurationError, match="fsync=off"):
        async with Worker(url, workflows=[tenant_flow]):
            pass
    ran = await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", url, "worker", "-m", "os"])
    assert ran.exit_code in (1, 2)
    monkeypatch.setenv(durability.ENV_UNSAFE_DURABILITY, "1")
    from cairn.store import db

    await asyncio.to_thread(db.migrate, url)
    async with await Client.connect(url) as client:
        assert await client.list() == []


async def test_idle_in_transaction_timeout_on_engine_connections(client, start_worker):
    worker = await start_worker(workflows=[tenant_flow], activities=[tenant_step])
    assert worker._pool is not None
    async with worker._pool.connection() as c:
        assert (await (await c.execute("SHOW idle_in_transaction_session_timeout")).fetchone())[0] == "1min"
    async with client.pool.connection() as c:
        assert (await (await c.execute("SHOW idle_in_transaction_session_timeout")).fetchone())[0] == "1min"
        assert (await (await c.execute("SHOW synchronous_commit")).fetchone())[0] == "on"
