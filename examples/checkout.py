"""The README's example: charge an order, wait on a durable timer, return the receipt."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from cairn import RetryPolicy, activity, workflow


class Order(BaseModel):
    id: str
    amount: int


@activity.defn
async def charge(order: Order) -> str:
    # Real side effects live here; the idempotency key is stable across retries.
    key = activity.info().idempotency_key
    return f"receipt-{order.id}-{order.amount}-{key.rsplit('/', 1)[-1]}"


@workflow.defn
async def checkout(order: Order) -> str:
    receipt: str = await workflow.execute_activity(
        charge, order,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_attempts=5),
    )
    await workflow.sleep(timedelta(seconds=0.5))  # durable timer: survives restarts
    return receipt
