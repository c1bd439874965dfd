"""An order saga: reserve inventory -> charge payment -> create shipment.

- Reserving and charging are a saga: if the charge fails (card declined), the reservation
  is released by its compensation, and the run fails with the decline.
- The payment provider sits behind a circuit breaker shared by every worker
  (``@activity.defn(breaker=...)``): while it is open (``cairn breakers open payments``),
  charges wait, without a call and without burning an attempt.
- Once paid, an order is never undone because of OUR bug: a shipment the carrier rejects
  fails the run (a dead letter: ``cairn list --where 'Status = "failed"'``). After the fix,
  an operator re-drives it with ``cairn reset ORDER --to-seq N`` (N: the workflow task that
  scheduled ``create_shipment``, from ``cairn history ORDER``): the new run keeps the
  recorded reservation and charge, so nothing is charged twice, and ships.

Run it: ``python examples/order_saga.py`` (embedded Postgres, or ``CAIRN_DATABASE_URL``
after ``cairn db migrate``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta

import psycopg
from pydantic import BaseModel

from cairn import ApplicationError, Client, RetryPolicy, Worker, WorkflowFailure, activity, workflow
from cairn.breakers import BreakerConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (sku text PRIMARY KEY, available int NOT NULL CHECK (available >= 0));
CREATE TABLE IF NOT EXISTS reservations (order_id text PRIMARY KEY, sku text NOT NULL, qty int NOT NULL,
                                         released bool NOT NULL DEFAULT false);
CREATE TABLE IF NOT EXISTS charges (idempotency_key text PRIMARY KEY, order_id text NOT NULL, cents int NOT NULL);
CREATE TABLE IF NOT EXISTS shipments (order_id text PRIMARY KEY, tracking text NOT NULL);
CREATE TABLE IF NOT EXISTS carrier_settings (fixed bool NOT NULL);   -- our carrier integration's bug, and its fix
INSERT INTO stock VALUES ('lamp', 100) ON CONFLICT DO NOTHING;
"""
MINUTE = timedelta(minutes=1)
PAYMENTS = BreakerConfig(name="payments", minimum_calls=5, recovery_timeout=30)


class Order(BaseModel):
    id: str
    sku: str = "lamp"
    qty: int = 1
    cents: int = 4_200
    card: str = "4242"           # "0002": declined
    address: str = "1 Main St"   # "Apt" in it: the carrier (until fixed) rejects it


def app_db() -> str:
    return os.environ["CAIRN_DATABASE_URL"]


async def _execute(sql: str, *params: object) -> None:
    async with await psycopg.AsyncConnection.connect(app_db(), autocommit=True) as conn:
        await conn.execute(sql, params)


# ---------------------------------------------------------------- activities (idempotent)


@activity.defn
async def reserve_inventory(order: Order) -> None:
    async with await psycopg.AsyncConnection.connect(app_db()) as conn, conn.transaction():
        cur = await conn.execute("INSERT INTO reservations (order_id, sku, qty) VALUES (%s, %s, %s) "
                                 "ON CONFLICT DO NOTHING", (order.id, order.sku, order.qty))
        if cur.rowcount:  # a retry of a reservation that committed takes no more stock
            await conn.execute("UPDATE stock SET available = available - %s WHERE sku = %s", (order.qty, order.sku))


@activity.defn
async def release_inventory(order: Order) -> None:
    async with await psycopg.AsyncConnection.connect(app_db()) as conn, conn.transaction():
        cur = await conn.execute("UPDATE reservations SET released = true WHERE order_id = %s AND NOT released "
                                 "RETURNING qty", (order.id,))
        if (row := await cur.fetchone()) is not None:
            await conn.execute("UPDATE stock SET available = available + %s WHERE sku = %s", (row[0], order.sku))


@activity.defn(breaker=PAYMENTS)
async def charge_payment(order: Order) -> str:
    """The payment provider, called with the attempt's idempotency key (no double charge)."""
    if order.card == "0002":
        raise ApplicationError("card declined", type="CardDeclined", non_retryable=True)
    key = activity.info().idempotency_key
    await _execute("INSERT INTO charges VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", key, order.id, order.cents)
    return key


@activity.defn
async def refund_payment(order: Order) -> None:
    await _execute("DELETE FROM charges WHERE order_id = %s", order.id)


@activity.defn
async def create_shipment(order: Order) -> str:
    async with await psycopg.AsyncConnection.connect(app_db(), autocommit=True) as conn:
        row = await (await conn.execute("SELECT bool_or(fixed) FROM carrier_settings")).fetchone()
        if "Apt" in order.address and not (row and row[0]):
            raise ApplicationError(f"carrier rejected address {order.address!r}", type="AddressRejected",
                                   non_retryable=True)
        tracking = f"TRK-{order.id}"
        await conn.execute("INSERT INTO shipments VALUES (%s, %s) ON CONFLICT DO NOTHING", (order.id, tracking))
    return tracking


# ---------------------------------------------------------------- the workflow


@workflow.defn
async def place_order(order: Order) -> str:
    async with workflow.saga() as saga:
        saga.compensate(release_inventory, order)          # registered first: it copes with no reservation
        await workflow.execute_activity(reserve_inventory, order, start_to_close_timeout=MINUTE)
        await workflow.execute_activity(charge_payment, order, start_to_close_timeout=MINUTE,
                                        throttle_budget=3600)   # how long an open breaker may hold it
        saga.compensate(refund_payment, order)
    # Paid: from here a failure is a dead letter for an operator, not a reason to refund.
    return await workflow.execute_activity(create_shipment, order, start_to_close_timeout=MINUTE,
                                           retry_policy=RetryPolicy(maximum_attempts=3))


ACTIVITIES = [reserve_inventory, release_inventory, charge_payment, refund_payment, create_shipment]


async def main() -> None:
    async with await Client.connect() as client:
        os.environ.setdefault("CAIRN_DATABASE_URL", client.url)  # where the activities find the app's tables
        await _execute(SCHEMA)
        async with Worker(client.url, workflows=[place_order], activities=ACTIVITIES):
            run = uuid.uuid4().hex[:6]
            for order in (Order(id=f"o-{run}-1"), Order(id=f"o-{run}-2", card="0002"),
                          Order(id=f"o-{run}-3", address="5 Elm St Apt 2")):
                handle = await client.start(place_order, order, id=order.id)
                try:
                    print(f"{order.id}: shipped, {await handle.result(timeout=60)}")
                except WorkflowFailure as exc:
                    saga = (await handle.describe()).saga or {}
                    undone = [c.get("activity_type") for c in saga.get("compensations", [])]
                    print(f"{order.id}: failed ({exc.message}); compensations run: {undone or 'none'}")
            print(f"\nfix the carrier, then re-drive the dead letter:\n"
                  f"  psql -c 'INSERT INTO carrier_settings VALUES (true)'\n"
                  f"  cairn history o-{run}-3      # the WorkflowTaskStarted before create_shipment is N\n"
                  f"  cairn reset o-{run}-3 --to-seq N --reason 'carrier fix deployed'")


if __name__ == "__main__":
    asyncio.run(main())
