"""Search attributes and memo (set at start, upserted by the workflow) and `list --where`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql as pgsql

from cairn import InputValidationError, workflow
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.store.filters import parse_filter
from cairn.store.sql import q
from cairn.workflow import WorkflowInfo, definition_of
from support import events

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@workflow.defn
async def tagged(stage: str) -> dict:
    seen = [workflow.search_attributes()]
    workflow.upsert_search_attributes({"stage": stage, "amount": 99.5, "note": None})
    seen.append(workflow.search_attributes())
    await workflow.sleep(0.05)
    workflow.upsert_search_attributes({"stage": "done", "tags": ["x", "y"]})
    seen.append(workflow.search_attributes())
    return {"seen": seen}


@workflow.defn
async def idle() -> None:
    await workflow.sleep(3600)


async def test_search_attributes_at_start_and_upserted(client, start_worker, sql):
    await start_worker(workflows=[tagged])
    h = await client.start(tagged, "shipping", id="sa-1",
                           search_attributes={"customer": "acme", "amount": 12.5, "vip": True, "due": T0,
                                              "note": "remove me"},
                           memo={"owner": {"team": "billing"}})
    result = await h.result(timeout=20)
    due = "2024-05-01T12:00:00.000000+00:00"
    start = {"customer": "acme", "amount": 12.5, "vip": True, "due": due, "note": "remove me"}
    assert result["seen"][0] == start
    assert result["seen"][1] == {"customer": "acme", "amount": 99.5, "vip": True, "due": due, "stage": "shipping"}
    assert result["seen"][2] == {**result["seen"][1], "stage": "done", "tags": ["x", "y"]}
    # The row carries the final values; the start values are in WorkflowStarted.
    [(attrs, memo)] = sql("SELECT search_attributes, memo FROM cairn.runs WHERE run_id = %s", (h.run_id,))
    assert attrs == result["seen"][2]
    assert memo == {"owner": {"team": "billing"}}
    evs = events(sql, h.run_id)
    assert evs[0][2]["search_attributes"] == start
    upserts = [d for _, t, d in evs if t == "UpsertSearchAttributes"]
    assert upserts == [{"search_attributes": {"stage": "shipping", "amount": 99.5, "note": None}},
                       {"search_attributes": {"stage": "done", "tags": ["x", "y"]}}]
    d = await h.describe()
    assert d.search_attributes == attrs
    assert d.memo == {"owner": {"team": "billing"}}
    assert d.reset_from is None

    # Replaying the recorded history (upserts included) gives the same commands and values.
    history = [Event(s, t, dd) for s, t, dd in evs]
    info = WorkflowInfo("sa-1", h.run_id, "tagged", "default", "default", T0)
    inst = replay(definition_of(tagged), info, history)
    assert inst.search_attributes == attrs
    # A history whose upsert differs from what the code produces does not replay.
    bad = [e if e.type != "UpsertSearchAttributes" else Event(e.seq, e.type, {"search_attributes": {"x": 1}})
           for e in history]
    with pytest.raises(Exception, match="UpsertSearchAttributes"):
        replay(definition_of(tagged), info, bad)


async def test_start_without_attributes_writes_no_extra_keys(client, sql):
    h = await client.start(idle, id="sa-none")
    [(attrs, memo)] = sql("SELECT search_attributes, memo FROM cairn.runs WHERE run_id = %s", (h.run_id,))
    assert (attrs, memo) == ({}, None)
    assert "search_attributes" not in events(sql, h.run_id)[0][2]


@pytest.mark.parametrize(("attrs", "memo", "message"), [
    ({"1bad": 1}, None, "invalid"),
    ({"a-b": 1}, None, "invalid"),
    ({"x" * 65: 1}, None, "longer than 64"),
    ({"WorkflowId": "x"}, None, "reserved"),
    ({"status": "x"}, None, "reserved"),
    ({"and": "x"}, None, "reserved"),
    ({"k": {"nested": 1}}, None, "type dict"),
    ({"k": float("nan")}, None, "finite"),
    ({"k": [1, 2]}, None, "only strings"),
    ({"k": datetime(2024, 1, 1)}, None, "timezone"),
    ({"k": None}, None, "null"),
    ({"k": "a\x00b"}, None, "NUL"),
    (None, ["not", "an", "object"], "JSON object"),
    (None, {"x": float("inf")}, "cannot be stored"),
])
async def test_bad_attributes_write_nothing(client, sql, attrs, memo, message):
    with pytest.raises(InputValidationError, match=message):
        await client.start(idle, id="sa-bad", search_attributes=attrs, memo=memo)
    assert sql("SELECT count(*) FROM cairn.runs") == [(0,)]


async def test_bad_upsert_fails_the_workflow(client, start_worker, sql):
    @workflow.defn(name="bad_upsert")
    async def bad_upsert() -> None:
        workflow.upsert_search_attributes({"WorkflowType": "x"})

    await start_worker(workflows=[bad_upsert])
    h = await client.start(bad_upsert, id="sa-badup")
    with pytest.raises(Exception, match="reserved"):
        await h.result(timeout=20)
    assert "UpsertSearchAttributes" not in [t for _, t, _ in events(sql, h.run_id)]


# ---------------------------------------------------------------- list --where


@pytest.fixture
async def fleet(client, sql):
    """Six runs with varied attributes (no worker: they stay running unless closed here)."""
    specs = [
        ("o-1", {"customer": "acme", "amount": 12.5, "vip": True, "due": T0, "tags": ["red", "blue"]}),
        ("o-2", {"customer": "acme", "amount": 5, "vip": False, "due": T0 + timedelta(days=2)}),
        ("o-3", {"customer": "globex", "amount": 100, "due": T0 - timedelta(days=1), "tags": ["blue"]}),
        ("o-4", {"customer": "acme-east", "amount": 10}),
        ("o-5", {"customer": "it's \"quoted\"", "count": 3}),
        ("x-6", {}),
    ]
    for wid, attrs in specs:
        await client.start(idle, id=wid, search_attributes=attrs)
    # close one, so that Status and CloseTime have something to find
    sql("UPDATE cairn.runs SET status = 'failed', closed_at = now() WHERE workflow_id = 'o-3'")
    return [w for w, _ in specs]


async def ids(client, where: str) -> list[str]:
    return sorted(r["workflow_id"] for r in await client.list(where=where))


@pytest.mark.parametrize(("where", "expected"), [
    ('customer = "acme"', ["o-1", "o-2"]),
    ("customer = 'acme'", ["o-1", "o-2"]),
    ('customer != "acme"', ["o-3", "o-4", "o-5"]),
    ('customer <> "acme"', ["o-3", "o-4", "o-5"]),
    ("amount > 10", ["o-1", "o-3"]),
    ("amount >= 10", ["o-1", "o-3", "o-4"]),
    ("amount < 10", ["o-2"]),
    ("amount <= 12.5", ["o-1", "o-2", "o-4"]),
    ("amount = 100", ["o-3"]),
    ("amount = 100.0", ["o-3"]),
    # numbers compare numerically (as text, "100" < "12.5")
    ("amount > 12.5", ["o-3"]),
    ("vip = true", ["o-1"]),
    ("vip = FALSE", ["o-2"]),
    ("due > '2024-05-01T12:00:00Z'", ["o-2"]),
    ("due >= '2024-05-01T12:00:00+00:00'", ["o-1", "o-2"]),
    ("due < '2024-05-01'", ["o-3"]),
    ("due = '2024-05-01T14:00:00+02:00'", ["o-1"]),
    ('tags = "blue"', ["o-1", "o-3"]),
    ('tags IN ("red", "green")', ["o-1"]),
    ('customer IN ("globex", "acme-east")', ["o-3", "o-4"]),
    ('customer NOT IN ("globex", "acme-east")', ["o-1", "o-2", "o-5", "x-6"]),
    ('customer STARTS_WITH "acme"', ["o-1", "o-2", "o-4"]),
    ("customer = 'it''s \"quoted\"'", ["o-5"]),
    ('customer = "it\'s \\"quoted\\""', ["o-5"]),
    ("tags IS NULL", ["o-2", "o-4", "o-5", "x-6"]),
    ("tags IS NOT NULL", ["o-1", "o-3"]),
    ("EXISTS count", ["o-5"]),
    # precedence: AND binds tighter than OR; NOT tighter than AND
    ('customer = "globex" OR customer = "acme" AND vip = true', ["o-1", "o-3"]),
    ('(customer = "globex" OR customer = "acme") AND amount > 10', ["o-1", "o-3"]),
    ('NOT customer = "acme" AND amount >= 10', ["o-3", "o-4"]),
    ('NOT (customer = "acme" OR amount >= 10)', ["o-5", "x-6"]),
    ("NOT amount > 10", ["o-2", "o-4", "o-5", "x-6"]),
    # built-ins
    ('WorkflowId = "o-4"', ["o-4"]),
    ('WorkflowId STARTS_WITH "x-"', ["x-6"]),
    ('WorkflowType = "idle" AND amount = 5', ["o-2"]),
    ('Status = "Failed"', ["o-3"]),
    ("ExecutionStatus != 'running'", ["o-3"]),
    ('Queue = "default" AND customer = "globex"', ["o-3"]),
    ("CloseTime IS NOT NULL", ["o-3"]),
    ("CloseTime IS NULL AND count = 3", ["o-5"]),
    ("StartTime > '2000-01-01' AND StartTime <= '2999-01-01' AND vip = false", ["o-2"]),
    ('WorkflowId IN ("o-1", "x-6")', ["o-1", "x-6"]),
    # values that are stored literally, never run
    ("customer = \"'; DROP TABLE cairn.runs; --\"", []),
    ("customer = 'x'' OR 1=1 --'", []),
])
async def test_list_where(client, fleet, where, expected):
    assert await ids(client, where) == expected


async def test_list_where_with_other_filters(client, fleet):
    rows = await client.list(where='customer STARTS_WITH "acme"', status="running", limit=2)
    assert [r["workflow_id"] for r in rows] == ["o-4", "o-2"]  # newest first
    assert rows[0]["search_attributes"] == {"customer": "acme-east", "amount": 10}


@pytest.mark.parametrize(("where", "message"), [
    ('customer == "acme"', "unexpected token '=' at column 11"),
    ('customer = "acme', "unterminated string starting with \" at column 12"),
    ('customer = "acme" garbage', "unexpected token 'garbage' at column 19"),
    ("customer = acme", "unexpected token 'acme' at column 12"),
    ('customer = "x"; DROP TABLE cairn.runs', "unexpected character ';' at column 15"),
    ('customer = "x" DROP TABLE cairn.runs', "unexpected token 'DROP' at column 16"),
    ("amount ~ 3", "unexpected character '~' at column 8"),
    ("amount LIKE 3", "unexpected token 'LIKE' at column 8"),
    ("(amount > 3", "unexpected end of filter at column 12 (expected ')')"),
    ("amount > 3)", "unexpected token ')' at column 11"),
    ("", "empty filter"),
    ("AND", "unexpected token 'AND' at column 1"),
    ("amount IN ()", "unexpected token ')' at column 12"),
    ("vip > true", "does not apply to true/false at column 7"),
    ("StartTime > 'yesterday'", "needs a datetime string"),
    ("WorkflowId = 3", "needs a quoted string"),
    ("amount > 1abc", "unexpected token '1abc' at column 10"),
    ("1 = 1", "unexpected token '1' at column 1"),
    ("x = 1 OR 1 = 1", "unexpected token '1' at column 10"),
])
async def test_bad_filters(client, fleet, sql, where, message):
    with pytest.raises(InputValidationError) as err:
        await client.list(where=where)
    assert message in str(err.value)
    assert sql("SELECT count(*) FROM cairn.runs") == [(6,)]


async def test_equality_filter_uses_the_gin_index(client, sql):
    sql("""INSERT INTO cairn.runs (run_id, workflow_id, workflow_type, queue, search_attributes)
           SELECT gen_random_uuid(), 'bulk-' || i, 'bulk', 'default',
                  jsonb_build_object('customer', 'c' || (i % 500), 'amount', i)
           FROM generate_series(1, 5000) i""")
    sql("ANALYZE cairn.runs")

    flt = parse_filter('customer = "c7"')

    query = pgsql.SQL("EXPLAIN " + q("list_runs_where")).format(where=pgsql.SQL(flt.sql))
    async with client.pool.connection() as c:
        await c.execute("SET enable_seqscan = off")
        await c.execute("SET enable_indexscan = off")  # rule out the run_id-ordered scan too
        plan = "\n".join(r[0] for r in await (await c.execute(query, {
            "namespace": "default", "status": None, "workflow_type": None, "limit": 50, "before": None,
            **flt.params})).fetchall())
    assert "runs_search_attributes" in plan, plan
    assert len(await client.list(where='customer = "c7"', limit=100)) == 10


async def test_upserted_attributes_are_filterable(client, start_worker):
    await start_worker(workflows=[tagged])
    h = await client.start(tagged, "packing", id="sa-2", search_attributes={"customer": "initech"})
    await h.result(timeout=20)
    assert await ids(client, 'customer = "initech" AND stage = "done" AND tags = "y" AND amount > 99') == ["sa-2"]


async def test_names_are_attribute_keys_not_sql(client, fleet, sql):
    # A filter naming a table or a column is just an attribute that no run has.
    assert await ids(client, 'history = "x" OR run_id = "y" OR search_attributes = "z"') == []
    assert sql("SELECT count(*) FROM cairn.history") == [(6,)]


def test_sync_client_start_in_callers_transaction(db_url, sql):
    import psycopg

    from cairn.sync import SyncClient

    with SyncClient(db_url) as client, psycopg.connect(db_url) as conn:
        with conn.transaction():
            h = client.start(idle, id="sa-sync", conn=conn, search_attributes={"customer": "acme"}, memo={"x": 1})
        assert [r["workflow_id"] for r in client.list(where='customer = "acme"')] == ["sa-sync"]
    assert sql("SELECT search_attributes, memo FROM cairn.runs WHERE run_id = %s", (h.run_id,)) == [
        ({"customer": "acme"}, {"x": 1})]
