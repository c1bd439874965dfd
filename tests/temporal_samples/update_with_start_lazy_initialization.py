"""Port of samples-python message_passing/update_with_start/lazy_initialization/
(activities.py, workflows.py, starter.py) in one module.

The workflow class (an ``@workflow.update`` with its ``@add_item.validator``, a
``@workflow.signal``), the activity and the logic are the sample's. The API changes: imports
from ``cairn``; ``typing.List`` / ``Tuple`` / ``Optional`` are spelled ``list`` / ``tuple`` /
``X | None``; the starter takes the test's client; ``WithStartWorkflowOperation`` takes
``id_conflict_policy="use_existing"`` (Temporal's enum ``WorkflowIDConflictPolicy.USE_EXISTING``)
and ``queue=`` (``task_queue=``).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta

from cairn import (
    ApplicationError,
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    activity,
    workflow,
)

TASK_QUEUE = "update-with-start-lazy-initialization"


# activities.py
@dataclass
class ShoppingCartItem:
    sku: str
    quantity: int


@activity.defn
async def get_price(item: ShoppingCartItem) -> int | None:
    await asyncio.sleep(0.1)
    price = None if item.sku == "sku-456" else 599
    if price is None:
        return None
    return price * item.quantity


# workflows.py
@dataclass
class FinalizedOrder:
    id: str
    items: list[tuple[ShoppingCartItem, int]]
    total: int


@workflow.defn
class ShoppingCartWorkflow:
    def __init__(self) -> None:
        self.items: list[tuple[ShoppingCartItem, int]] = []
        self.order_submitted = False

    @workflow.run
    async def run(self) -> FinalizedOrder:
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() and self.order_submitted
        )
        return FinalizedOrder(
            id=workflow.info().workflow_id,
            items=self.items,
            total=sum(price for _, price in self.items),
        )

    @workflow.update
    async def add_item(self, item: ShoppingCartItem) -> int:
        price = await workflow.execute_activity(
            get_price, item, start_to_close_timeout=timedelta(seconds=10)
        )
        if price is None:
            raise ApplicationError(
                f"Item unavailable: {item}",
                type="ItemUnavailableError",
            )
        self.items.append((item, price))

        return sum(price for _, price in self.items)

    @add_item.validator
    def validate_add_item(self, item: ShoppingCartItem) -> None:
        if self.order_submitted:
            raise ApplicationError("Order already submitted")

    @workflow.signal
    def checkout(self) -> None:
        self.order_submitted = True


# starter.py
async def handle_add_item_request(
    session_id: str, item_id: str, quantity: int, client: Client
) -> tuple[int | None, WorkflowHandle]:
    """
    Handle a client request to add an item to the shopping cart. The user is not logged in, but a session ID is
    available from a cookie, and we use this as the cart ID. The Cairn client was created at service-start
    time and is shared by all request handlers.

    A Workflow Type exists that can be used to represent a shopping cart. The method uses update-with-start to
    add an item to the shopping cart, creating the cart if it doesn't already exist.

    Note that the workflow handle is available, even if the Update fails.
    """
    cart_id = f"cart-{session_id}"
    start_op = WithStartWorkflowOperation(
        ShoppingCartWorkflow.run,
        id=cart_id,
        id_conflict_policy="use_existing",
        queue=TASK_QUEUE,
    )
    try:
        price = await client.execute_update_with_start_workflow(
            ShoppingCartWorkflow.add_item,
            ShoppingCartItem(sku=item_id, quantity=quantity),
            start_workflow_operation=start_op,
        )
    except WorkflowUpdateFailedError as err:
        if (
            isinstance(err.cause, ApplicationError)
            and err.cause.type == "ItemUnavailableError"
        ):
            price = None
        else:
            raise err

    workflow_handle = await start_op.workflow_handle()

    return price, workflow_handle


async def main(client: Client) -> None:
    print("🛒")
    session_id = f"session-{uuid.uuid4()}"

    subtotal_1, _ = await handle_add_item_request(session_id, "sku-123", 1, client)
    subtotal_2, wf_handle = await handle_add_item_request(
        session_id, "sku-456", 1, client
    )
    print(f"subtotals were, {[subtotal_1, subtotal_2]}")
    await wf_handle.signal(ShoppingCartWorkflow.checkout)
    final_order = await wf_handle.result()
    print(f"final order: {final_order}")
