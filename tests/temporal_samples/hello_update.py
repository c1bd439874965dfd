"""Port of samples-python hello/hello_update.py.

Temporal's class (``@workflow.defn class GreetingWorkflow`` with ``@workflow.run`` and an
``@workflow.update`` method) becomes Cairn's function form: the update handler is
registered with ``workflow.set_update_handler``; the worker runs in process, on the
sample's queue.
"""

from __future__ import annotations

import asyncio

from cairn import Client, Worker, workflow

QUEUE = "update-workflow-task-queue"


@workflow.defn(name="GreetingWorkflow")
async def greeting_workflow() -> str:
    state = {"is_complete": False}

    async def update_workflow_status() -> str:
        state["is_complete"] = True
        return "Workflow status updated"

    workflow.set_update_handler("update_workflow_status", update_workflow_status)
    await workflow.wait_condition(lambda: state["is_complete"])
    return "Hello, World!"


async def main(url: str | None = None) -> None:
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(url, workflows=[greeting_workflow], queues=[QUEUE]):
        # While the worker is running, use the client to start the workflow.
        # Note, in many production setups, the client would be in a completely
        # separate process from the worker.
        handle = await client.start(greeting_workflow, id="hello-update-workflow-id", queue=QUEUE)

        # Perform the update for GreetingWorkflow
        update_result = await handle.execute_update("update_workflow_status")
        print(f"Update Result: {update_result}")

        # Get the result for GreetingWorkflow
        result = await handle.result()
        print(f"Workflow Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
