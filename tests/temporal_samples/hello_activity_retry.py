"""Port of samples-python hello/hello_activity_retry.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; there is no ``activity_executor`` (a worker runs
plain ``def`` activities in its own thread pool); ``client.execute_workflow`` is
``client.execute``. Cairn's default retry policy is Temporal's (1 s initial interval,
coefficient 2, unlimited attempts), so the three failed attempts wait 1, 2 and 2 seconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from cairn import Client, RetryPolicy, Worker, activity, workflow


@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


@activity.defn
def compose_greeting(input: ComposeGreetingInput) -> str:
    print(f"Invoking activity, attempt number {activity.info().attempt}")
    # Fail the first 3 attempts, succeed the 4th
    if activity.info().attempt < 4:
        raise RuntimeError("Intentional failure")
    return f"{input.greeting}, {input.name}!"


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        # By default activities will retry, backing off an initial interval and
        # then using a coefficient of 2 to increase the backoff each time after
        # for an unlimited amount of time and an unlimited number of attempts.
        # We'll keep those defaults except we'll set the maximum interval to
        # just 2 seconds.
        return await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=2)),
        )


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-activity-retry-task-queue"],
        workflows=[GreetingWorkflow],
        activities=[compose_greeting],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        result = await client.execute(
            GreetingWorkflow.run,
            "World",
            id="hello-activity-retry-workflow-id",
            queue="hello-activity-retry-task-queue",
        )
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
