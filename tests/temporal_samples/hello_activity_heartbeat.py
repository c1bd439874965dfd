"""Port of samples-python hello/hello_activity_heartbeat.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; there is no ``activity_executor`` (a worker runs
plain ``def`` activities in its own thread pool); ``client.execute_workflow`` is
``client.execute``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

from cairn import Client, Worker, activity, workflow


@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


@activity.defn
def compose_greeting(input: ComposeGreetingInput) -> str:
    # We'll wait for 3 seconds, heartbeating in between (like all long-running
    # activities should do), then return the greeting
    for _ in range(0, 3):
        print("Heartbeating activity")
        activity.heartbeat()
        time.sleep(1)
    return f"{input.greeting}, {input.name}!"


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
            # Always set a heartbeat timeout for long-running activities
            heartbeat_timeout=timedelta(seconds=2),
        )


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-activity-heartbeating-task-queue"],
        workflows=[GreetingWorkflow],
        activities=[compose_greeting],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        result = await client.execute(
            GreetingWorkflow.run,
            "World",
            id="hello-activity-heartbeating-workflow-id",
            queue="hello-activity-heartbeating-task-queue",
        )
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
