"""`make demo`'s first example: charge an order (retried on a flaky provider), wait on a
durable timer, return the receipt. (The README's quick start has its own, place_order.)

Run it with a worker:  cairn worker -m checkout   (from this directory)
and start it with:     cairn start checkout --input '{"id": "o-1", "amount": 42}' --wait
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from cairn import ApplicationError, RetryPolicy, activity, workflow


class Order(BaseModel):
    id: str
    amount: int


@activity.defn
async def charge(order: Order) -> str:
    """Charges the order. The payment provider is flaky: the first attempt fails."""
    info = activity.info()
    if info.attempt == 1:
        raise ApplicationError("payment provider timed out", type="ProviderTimeout")
    # The idempotency key is the same on every attempt: pass it to the provider so a
    # retry never charges twice.
    return f"receipt:{order.id}:{order.amount}:{info.idempotency_key}"


@workflow.defn
async def checkout(order: Order) -> str:
    receipt: str = await workflow.execute_activity(
        charge, order,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5),
    )
    await workflow.sleep(timedelta(seconds=1))  # a durable timer: survives worker restarts
    return receipt
