"""Port of samples-python hello/hello_update.py.

The workflow class is the sample's. The API changes: imports from ``cairn``;
``Client.connect`` takes a database URL (the sample's ``ClientConfig`` and host go);
``Worker`` takes the URL and ``queues`` instead of the client and ``task_queue``;
``client.start_workflow(..., task_queue=)`` is ``client.start(..., queue=)``.
"""

from __future__ import annotations

import asyncio
import sys

from cairn import Client, Worker, workflow


@workflow.defn
class GreetingWorkflow:
    def __init__(self) -> None:
        self.is_complete = False

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.is_complete)
        return "Hello, World!"

    @workflow.update
    async def update_workflow_status(self) -> str:
        self.is_complete = True
        return "Workflow status updated"


async def main(url: str | None = None) -> None:
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["update-workflow-task-queue"],
        workflows=[GreetingWorkflow],
    ):
        # While the worker is running, use the client to start the workflow.
        # Note, in many production setups, the client would be in a completely
        # separate process from the worker.
        handle = await client.start(
            GreetingWorkflow.run,
            id="hello-update-workflow-id",
            queue="update-workflow-task-queue",
        )

        # Perform the update for GreetingWorkflow
        update_result = await handle.execute_update(
            GreetingWorkflow.update_workflow_status
        )
        print(f"Update Result: {update_result}")

        # Get the result for GreetingWorkflow
        result = await handle.result()
        print(f"Workflow Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
