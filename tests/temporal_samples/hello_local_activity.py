"""Temporal's samples-python ``hello/hello_local_activity.py``, ported to Cairn.

The workflow class, the activity and the logic are the sample's. The API changes: imports
from ``cairn``; ``Client.connect`` takes a database URL (the sample's ``ClientConfig`` and
host go); ``Worker`` takes the URL and ``queues`` instead of the client and ``task_queue``,
and has no ``activity_executor`` (it runs plain ``def`` activities in its own thread pool);
``client.execute_workflow(..., task_queue=)`` is ``client.execute(..., queue=)``.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import timedelta

from cairn import Client, Worker, activity, workflow


@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


@activity.defn
def compose_greeting(input: ComposeGreetingInput) -> str:
    return f"{input.greeting}, {input.name}!"


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_local_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
        )


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-local-activity-task-queue"],
        workflows=[GreetingWorkflow],
        activities=[compose_greeting],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        result = await client.execute(
            GreetingWorkflow.run,
            "World",
            id="hello-local-activity-workflow-id",
            queue="hello-local-activity-task-queue",
        )
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
