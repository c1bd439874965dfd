"""examples/order_saga.py end to end: a declined card compensates the reservation, an open
payments breaker holds charges without calls, and a dead-lettered order is re-driven with
`cairn reset` after the fix, without a second charge."""

from __future__ import annotations

import json

import order_saga as ex
import pytest

from cairn import WorkflowFailure, breakers
from support import cairn_in_thread as cli


@pytest.fixture
async def shop(client, start_worker, db_url, monkeypatch):
    monkeypatch.setenv("CAIRN_DATABASE_URL", db_url)
    await ex._execute(ex.SCHEMA)
    await start_worker(workflows=[ex.place_order], activities=ex.ACTIVITIES)
    return client


async def test_orders_ship_compensate_and_wait_for_the_payments_breaker(shop, db_url, sql):
    client = shop
    ok = await client.start(ex.place_order, ex.Order(id="o-1"), id="o-1")
    assert await ok.result(timeout=20) == "TRK-o-1"
    declined = await client.start(ex.place_order, ex.Order(id="o-2", card="0002"), id="o-2")
    with pytest.raises(WorkflowFailure, match="card declined"):
        await declined.result(timeout=20)
    saga = (await declined.describe()).saga
    assert saga is not None
    assert saga["status"] == "compensated"
    assert [(c["activity_type"], c["status"]) for c in saga["compensations"]] == [("release_inventory", "completed")]
    assert sql("SELECT order_id, released FROM reservations ORDER BY order_id") == [("o-1", False), ("o-2", True)]
    assert sql("SELECT order_id FROM charges") == [("o-1",)]
    assert sql("SELECT available FROM stock") == [(99,)], "the declined order's lamp is back in stock"

    # An operator opens the payments breaker for 2 s: the next charge waits, with no call.
    opened = await cli(db_url, "breakers", "open", "payments", "--for", "2")
    assert opened.exit_code == 0, opened.output
    waiting = await client.start(ex.place_order, ex.Order(id="o-3"), id="o-3")
    assert await waiting.result(timeout=30) == "TRK-o-3"
    async with client.pool.connection() as conn:
        [payments] = [b for b in await breakers.describe(conn) if b["name"] == "payments"]
    assert payments["counters"]["not_permitted"] >= 1, "the charge was refused while the breaker was open"
    history = await waiting.history()
    charge_seq = next(e.seq for e in history if e.type == "ActivityScheduled"
                      and e.data["activity_type"] == "charge_payment")
    [charged] = [e for e in history if e.type == "ActivityCompleted" and e.data["activity_seq"] == charge_seq]
    assert charged.data["attempt"] == 1, "waiting for the breaker burnt no attempt"


async def test_a_dead_lettered_order_is_redriven_with_cairn_reset_after_the_fix(shop, db_url, sql):
    client = shop
    order = ex.Order(id="o-apt", address="5 Elm St Apt 2")
    handle = await client.start(ex.place_order, order, id="o-apt")
    with pytest.raises(WorkflowFailure, match="carrier rejected address"):
        await handle.result(timeout=20)
    dead = await cli(db_url, "list", "--where", 'Status = "failed"', "--json")
    assert [r["workflow_id"] for r in json.loads(dead.output)["runs"]] == ["o-apt"]
    # Paid and reserved, not undone: the order waits for an operator.
    assert sql("SELECT count(*) FROM charges WHERE order_id = 'o-apt'") == [(1,)]
    assert sql("SELECT released FROM reservations WHERE order_id = 'o-apt'") == [(False,)]

    sql("INSERT INTO carrier_settings VALUES (true)")  # the fix is deployed
    shown = await cli(db_url, "history", "o-apt", "--json")
    events = json.loads(shown.output)["events"]
    ship = next(e["seq"] for e in events if e["type"] == "ActivityScheduled"
                and e["data"]["activity_type"] == "create_shipment")
    n = max(e["seq"] for e in events if e["type"] == "WorkflowTaskStarted" and e["seq"] < ship)
    reset = await cli(db_url, "reset", "o-apt", "--to-seq", str(n), "--reason", "carrier fix deployed", "--json")
    assert reset.exit_code == 0, reset.output
    new_run = json.loads(reset.output)["run_id"]
    assert new_run != handle.run_id

    assert await client.get_handle("o-apt").result(timeout=20) == "TRK-o-apt"
    assert sql("SELECT status FROM cairn.runs WHERE workflow_id = 'o-apt' ORDER BY run_id") == [
        ("failed",), ("completed",)]
    assert sql("SELECT count(*) FROM charges WHERE order_id = 'o-apt'") == [(1,)], "never charged twice"
    assert sql("SELECT available FROM stock") == [(99,)], "reserved once"
    assert sql("SELECT tracking FROM shipments") == [("TRK-o-apt",)]
    scheduled = [t for _, t in sql("SELECT seq, data->>'activity_type' FROM cairn.history "
                                   "WHERE run_id = %s AND type = 'ActivityScheduled' ORDER BY seq", (new_run,))]
    assert scheduled == ["reserve_inventory", "charge_payment", "create_shipment"]
