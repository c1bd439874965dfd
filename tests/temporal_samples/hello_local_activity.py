"""Temporal's samples-python ``hello/hello_local_activity.py``, ported to Cairn.

What changed is the API only: imports; the workflow is an ``async def`` (Cairn's function
form) instead of a class with ``@workflow.run``; ``Client.connect`` takes a database URL;
``Worker`` takes the URL and ``queues`` (the worker runs plain ``def`` activities in its own
thread pool, so there is no ``activity_executor``); ``client.execute_workflow`` is
``client.start(...)`` then ``handle.result()``. The workflow's logic and what it prints
are the sample's.
"""

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


@workflow.defn(name="GreetingWorkflow")
async def greeting_workflow(name: str) -> str:
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
        workflows=[greeting_workflow],
        activities=[compose_greeting],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        handle = await client.start(
            greeting_workflow,
            "World",
            id="hello-local-activity-workflow-id",
            queue="hello-local-activity-task-queue",
        )
        result = await handle.result()
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
