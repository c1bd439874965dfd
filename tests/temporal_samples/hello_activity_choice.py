"""Port of samples-python hello/hello_activity_choice.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; there is no ``activity_executor`` (a worker runs
plain ``def`` activities in its own thread pool); ``client.execute_workflow`` is
``client.execute``. The ``IntEnum`` and the nested dataclasses travel as JSON and come back
typed by the annotations, so ``item.fruit is Fruit.APPLE`` holds in the workflow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

from cairn import Client, Worker, activity, workflow

# Activities that will be called by the workflow


@activity.defn
def order_apples(amount: int) -> str:
    return f"Ordered {amount} Apples..."


@activity.defn
def order_bananas(amount: int) -> str:
    return f"Ordered {amount} Bananas..."


@activity.defn
def order_cherries(amount: int) -> str:
    return f"Ordered {amount} Cherries..."


@activity.defn
def order_oranges(amount: int) -> str:
    return f"Ordered {amount} Oranges..."


# We have to make enumerates IntEnum to be JSON serializable
class Fruit(IntEnum):
    APPLE = 1
    BANANA = 2
    CHERRY = 3
    ORANGE = 4


@dataclass
class ShoppingListItem:
    fruit: Fruit
    amount: int


@dataclass
class ShoppingList:
    items: list[ShoppingListItem]


# Basic workflow that logs and invokes different activities based on input
@workflow.defn
class PurchaseFruitsWorkflow:
    @workflow.run
    async def run(self, shopping_list: ShoppingList) -> str:
        # Order each thing on the list
        ordered: list[str] = []
        for item in shopping_list.items:
            if item.fruit is Fruit.APPLE:
                order_function = order_apples
            elif item.fruit is Fruit.BANANA:
                order_function = order_bananas
            elif item.fruit is Fruit.CHERRY:
                order_function = order_cherries
            elif item.fruit is Fruit.ORANGE:
                order_function = order_oranges
            else:
                raise ValueError(f"Unrecognized fruit: {item.fruit}")
            ordered.append(
                await workflow.execute_activity(
                    order_function,
                    item.amount,
                    start_to_close_timeout=timedelta(seconds=5),
                )
            )
        return "".join(ordered)


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-activity-choice-task-queue"],
        workflows=[PurchaseFruitsWorkflow],
        activities=[order_apples, order_bananas, order_cherries, order_oranges],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        result = await client.execute(
            PurchaseFruitsWorkflow.run,
            ShoppingList(
                [
                    ShoppingListItem(Fruit.APPLE, 8),
                    ShoppingListItem(Fruit.BANANA, 5),
                    ShoppingListItem(Fruit.CHERRY, 1),
                    ShoppingListItem(Fruit.ORANGE, 4),
                ]
            ),
            id="hello-activity-choice-workflow-id",
            queue="hello-activity-choice-task-queue",
        )
        print(f"Order result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
