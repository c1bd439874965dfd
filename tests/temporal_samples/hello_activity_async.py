"""Port of samples-python hello/hello_activity_async.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.execute_workflow`` is ``client.execute``. The
activity is an ``async def``, run on the worker's event loop, as in the sample.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from cairn import Client, Worker, activity, workflow


# While we could use multiple parameters in the activity, Temporal strongly
# encourages using a single dataclass instead which can have fields added to it
# in a backwards-compatible way.
@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


# Basic activity that logs and does string concatenation
@activity.defn
async def compose_greeting(input: ComposeGreetingInput) -> str:
    activity.logger.info("Running activity with parameter %s", input)
    return f"{input.greeting}, {input.name}!"


# Basic workflow that logs and invokes an activity
@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        workflow.logger.info("Running workflow with parameter %s", name)
        return await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
        )


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    # (only async activities here: they run in the worker's event loop)
    async with Worker(
        url,
        queues=["hello-activity-task-queue"],
        workflows=[GreetingWorkflow],
        activities=[compose_greeting],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        result = await client.execute(
            GreetingWorkflow.run,
            "World",
            id="hello-activity-workflow-id",
            queue="hello-activity-task-queue",
        )
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
