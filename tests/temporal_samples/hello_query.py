"""Port of samples-python hello/hello_query.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.start_workflow`` is
``client.start``. The workflow's ``asyncio.sleep(2)`` is a durable timer, as in Temporal.
"""

from __future__ import annotations

import asyncio

from cairn import Client, Worker, workflow


@workflow.defn
class GreetingWorkflow:
    def __init__(self) -> None:
        self._greeting = "<no greeting>"

    @workflow.run
    async def run(self, name: str) -> None:
        self._greeting = f"Hello, {name}!"
        await asyncio.sleep(2)
        self._greeting = f"Goodbye, {name}!"

    # Instead of a method, this could be a property (see the sample)
    @workflow.query
    def greeting(self) -> str:
        return self._greeting


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-query-task-queue"],
        workflows=[GreetingWorkflow],
    ):
        # While the worker is running, use the client to start the workflow.
        # Note, in many production setups, the client would be in a completely
        # separate process from the worker.
        handle = await client.start(
            GreetingWorkflow.run,
            "World",
            id="hello-query-workflow-id",
            queue="hello-query-task-queue",
        )

        # Immediately query
        result = await handle.query(GreetingWorkflow.greeting)
        print(f"First greeting result: {result}")

        # Wait a few seconds then query again. This doesn't block any other
        # workflow progress or anything.
        await asyncio.sleep(3)
        result = await handle.query(GreetingWorkflow.greeting)
        print(f"Second greeting result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
