"""The type registry per (namespace, queue, type), and claims of only the types a worker
runs (issue 15, B8-B10): a start validates against its queue's schema and finds the queue
when one serves the type; a worker never claims (and fails) a task of a type it lacks; a
start of a type no worker has registered yet waits for one."""

from __future__ import annotations

import logging

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from cairn import Client, InputValidationError, Worker, activity, workflow
from cairn.store import db
from cairn.store.sql import q
from support import wait_until


@workflow.defn(name="shared")
async def shared_on_q1(n: int) -> str:
    return f"q1:{n}"


@workflow.defn(name="shared")
async def shared_on_q2(text: str) -> str:
    return f"q2:{text}"


@workflow.defn
async def solo(n: int) -> int:
    return n


def registry_rows(sql):
    return sql("SELECT queue, name FROM cairn.workflow_types ORDER BY queue, name")


async def test_a_start_validates_against_the_schema_of_its_queue(client, start_worker, sql):
    # q2's worker registers last: it used to overwrite the one schema of the type name.
    await start_worker(workflows=[shared_on_q1], queues=["q1"])
    await start_worker(workflows=[shared_on_q2], queues=["q2"])
    assert registry_rows(sql) == [("q1", "shared"), ("q2", "shared")]

    h1 = await client.start("shared", 5, queue="q1")
    h2 = await client.start("shared", "five", queue="q2")
    assert await h1.result(timeout=20) == "q1:5"
    assert await h2.result(timeout=20) == "q2:five"
    with pytest.raises(InputValidationError, match="input for workflow 'shared' is invalid"):
        await client.start("shared", "five", queue="q1")
    with pytest.raises(InputValidationError, match="input for workflow 'shared' is invalid"):
        await client.start("shared", 5, queue="q2")

    # No queue, and two serve the type: refused, naming them, before anything is written.
    runs = sql("SELECT count(*) FROM cairn.runs")
    with pytest.raises(InputValidationError, match=r"registered on several queues \(q1, q2\)"):
        await client.start("shared", 5)
    with pytest.raises(InputValidationError, match="several queues"):
        await client.start(shared_on_q1, 5)
    assert sql("SELECT count(*) FROM cairn.runs") == runs


async def test_without_a_queue_a_start_goes_to_the_one_queue_that_serves_its_type(client, start_worker, sql):
    await start_worker(workflows=[solo], queues=["elsewhere"])
    by_name = await client.start("solo", 1)
    by_function = await client.start(solo, 2)
    assert await by_name.result(timeout=20) == 1
    assert await by_function.result(timeout=20) == 2
    assert sql("SELECT DISTINCT queue FROM cairn.runs") == [("elsewhere",)]


async def test_a_start_before_any_worker_waits_for_one(client, start_worker, sql, caplog):
    with caplog.at_level(logging.WARNING, logger="cairn.client"):
        handle = await client.start(solo, 3, id="early")
    assert "no worker has registered workflow type 'solo' on queue 'default' yet" in caplog.text
    d = await handle.describe()
    assert [u["message"] for u in d.unserved] == [
        "no live worker serves workflow type 'solo' on queue 'default' (no worker has registered it there)"]
    await start_worker(workflows=[solo])
    assert await handle.result(timeout=20) == 3


# ---------------------------------------------------------------- claims: only what a worker runs

@activity.defn
async def only_here() -> str:
    return "ran"


@workflow.defn
async def first_kind() -> str:
    return "first"


@workflow.defn
async def second_kind() -> str:
    return await workflow.execute_activity(only_here, start_to_close_timeout=10)


async def test_a_worker_claims_only_the_workflow_types_it_runs(client, start_worker, sql):
    # One worker runs first_kind only. second_kind tasks on the same queue used to be claimed
    # by it and failed (UnknownWorkflowType: failures + 1, backed off up to a minute).
    only_first = await start_worker(workflows=[first_kind])
    waiting = [await client.start(second_kind, id=f"second-{i}") for i in range(3)]
    done = [await client.start(first_kind, id=f"first-{i}") for i in range(3)]
    for h in done:
        assert await h.result(timeout=20) == "first"
    # The other kind's tasks are queued, never failed; describe says why they wait.
    assert sql("SELECT workflow_type, failures FROM cairn.workflow_tasks ORDER BY run_id") == \
        [("second_kind", 0)] * 3
    assert only_first.stats.workflow_task_failures == 0
    d = await waiting[0].describe()
    assert d.workflow_task is not None
    assert d.workflow_task["failures"] == 0
    assert [u["message"] for u in d.unserved] == \
        ["no live worker serves workflow type 'second_kind' on queue 'default' (no worker has registered it there)"]

    # A worker that runs it starts: the queued runs complete. Their activity waits for a worker
    # that registered it (this one did) and is never claimed by the first worker.
    other = await start_worker(workflows=[second_kind], activities=[only_here])
    for h in waiting:
        assert await h.result(timeout=20) == "ran"
    assert only_first.stats.workflow_task_failures == other.stats.workflow_task_failures == 0
    assert sql("SELECT count(*) FROM cairn.history WHERE type = 'ActivityFailed'") == [(0,)]
    markers = sql("""SELECT r.workflow_type, h.data ->> 'worker' FROM cairn.history h JOIN cairn.runs r USING (run_id)
                     WHERE h.type = 'WorkflowTaskStarted' GROUP BY 1, 2 ORDER BY 1""")
    assert markers == [("first_kind", only_first.identity), ("second_kind", other.identity)]


async def test_an_activity_nobody_runs_waits_and_describe_says_so(client, start_worker, sql):
    await start_worker(workflows=[second_kind])  # the workflow, not its activity
    handle = await client.start(second_kind, id="needs-activity")
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.activity_tasks") == [(1,)],
                     what="the activity to be scheduled")
    d = await handle.describe()
    assert [u["message"] for u in d.unserved] == \
        ["no live worker serves activity type 'only_here' on queue 'default' (no worker has registered it there)"]
    assert d.to_json()["unserved"][0] == {"kind": "activity", "type": "only_here", "queue": "default",
                                          "message": d.unserved[0]["message"], "last_worker": None,
                                          "last_heartbeat": None}
    assert sql("SELECT attempt, last_failure FROM cairn.activity_tasks") == [(0, None)]

    await start_worker(activities=[only_here])
    assert await handle.result(timeout=20) == "ran"
    attempts = sql("SELECT (data ->> 'attempt')::int FROM cairn.history WHERE type = 'ActivityCompleted'")
    assert attempts == [(1,)]


# ---------------------------------------------------------------- migration 0012 keeps existing rows working

async def test_rows_from_before_migration_13_keep_working(empty_db_url):
    url = empty_db_url
    with psycopg.connect(url, autocommit=True) as conn:  # the schema as it was before 0012
        conn.execute(q("create_versions_table"))
        for m in db.migrations():
            if m.version < 12:
                conn.execute(m.sql.encode())
                conn.execute(q("record_version"), {"version": m.version, "name": m.name, "checksum": m.checksum})
        conn.execute("""INSERT INTO cairn.workflow_types (namespace, name, queues, input_schema)
                        VALUES ('default', 'solo', '{q1,default}', %s)""", (Jsonb({"type": "array"}),))
        run_id = "01a20306-11ac-7549-ba41-ce5c4352f885"
        conn.execute("""INSERT INTO cairn.runs (run_id, namespace, workflow_id, workflow_type, queue)
                        VALUES (%s, 'default', 'old', 'solo', 'default')""", (run_id,))
        conn.execute("INSERT INTO cairn.history (run_id, seq, type, data) VALUES (%s, 1, 'WorkflowStarted', %s)",
                     (run_id, Jsonb({"workflow_type": "solo", "input": [4], "queue": "default"})))
        conn.execute("INSERT INTO cairn.workflow_tasks (run_id, namespace, queue) VALUES (%s, 'default', 'default')",
                     (run_id,))
    assert db.migrate(url)[0] == 12  # and every later one
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT queue, name, input_schema FROM cairn.workflow_types ORDER BY 1").fetchall() == \
            [("default", "solo", {"type": "array"}), ("q1", "solo", {"type": "array"})]
        assert conn.execute("SELECT workflow_type FROM cairn.workflow_tasks").fetchall() == [("solo",)]

    async with await Client.connect(url) as client:
        with pytest.raises(InputValidationError, match="several queues"):
            await client.start("solo", 1)
        async with Worker(url, workflows=[solo], poll_interval=0.2):
            assert await client.get_handle("old").result(timeout=20) == 4


# ---------------------------------------------------------------- the claims' generic plans with a backlog

BACKLOG = """
INSERT INTO cairn.runs (run_id, namespace, workflow_id, workflow_type, queue)
SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, 'default', 'backlog-' || i, 'one_step', 'default'
FROM generate_series(1, %(n)s) AS i;
INSERT INTO cairn.workflow_tasks (run_id, queue, workflow_type, available_at)
SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, 'default', 'one_step',
       now() - interval '1 h' + i * interval '1 ms'
FROM generate_series(1, %(n)s) AS i;
INSERT INTO cairn.activity_tasks (run_id, seq, workflow_id, workflow_type, workflow_queue, activity_type, queue,
                                  input, options, scheduled_at, available_at)
SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, 3, 'backlog-' || i, 'one_step', 'default',
       'inc', 'default', '[1]', '{"start_to_close_timeout": 60}', now(), now() - interval '1 h' + i * interval '1 ms'
FROM generate_series(1, %(n)s) AS i;
ANALYZE cairn.runs, cairn.workflow_tasks, cairn.activity_tasks
"""


def test_the_claims_generic_plans_stay_index_lookups_with_a_backlog(db_url):
    """Workers run the claims as generic plans (WORKER_CONNECTION_OPTIONS). With the claim's
    limit a parameter, the plan guessed a tenth of the ready rows: past ~10,000 it joined
    every run (merge join) or hashed every activity task to find the few rows claimed."""
    from cairn.store.sql import _positional
    from cairn.worker import WORKER_CONNECTION_OPTIONS

    values = {"namespace": "default", "queues": ["default"], "now": None, "worker": "w", "lease": 5.0, "low": False}
    with psycopg.connect(db_url, autocommit=True, options=WORKER_CONNECTION_OPTIONS) as conn:
        conn.execute(BACKLOG.replace("%(n)s", "30000"))
        for name, types, limit in (("claim_workflow_task", ["one_step"], 8), ("claim_activity_tasks", ["inc"], 50)):
            text, names = _positional(name)
            conn.execute(f"PREPARE p_{name} AS {text}")
            args = {**values, "types": types, "limit": limit}
            with conn.transaction(force_rollback=True):
                cur = conn.cursor()
                cur.execute(sql.SQL("EXPLAIN (ANALYZE) EXECUTE {}({})").format(
                    sql.Identifier(f"p_{name}"), sql.SQL(", ").join(sql.Literal(args[n]) for n in names)))
                plan = "\n".join(r[0] for r in cur.fetchall())
            assert "Merge Join" not in plan, plan
            assert "Hash Join" not in plan, plan
            assert "Seq Scan on runs" not in plan, plan
            assert "Seq Scan on activity_tasks" not in plan, plan


async def test_the_web_view_says_what_a_run_waits_for(client, db_url):
    import httpx

    from .ui_support import ui_server

    handle = await client.start(solo, 1, id="waits")
    async with ui_server(db_url) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        page = await http.get("/runs/waits", params={"run_id": handle.run_id})
    assert page.status_code == 200, page.text
    assert '<ul id="unserved"><li>no live worker serves workflow type &#x27;solo&#x27; on queue ' \
           "&#x27;default&#x27; (no worker has registered it there) · " \
           '<a href="/workers?queue=default&amp;all=1">workers of default</a></li></ul>' in page.text
