"""Port of samples-python hello/hello_cron.py.

The workflow class, the activity and the logic are the sample's. The API changes: imports
from ``cairn``; ``Client.connect`` takes a database URL (the sample's ``ClientConfig`` and
host go); ``Worker`` takes the URL and ``queues`` instead of the client and ``task_queue``,
and has no ``activity_executor`` (it runs plain ``def`` activities in its own thread pool).
Cairn has no cron workflows: ``start_workflow(..., cron_schedule="* * * * *")`` becomes
``create_schedule`` with that cron expression (what Temporal itself recommends over cron
workflows), so each minute's run has the workflow id ``hello-cron-workflow-id-<slot time>``
instead of a new run of ``hello-cron-workflow-id``. ``main`` waits until ``stop`` is set
instead of forever, so a test can end it.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import timedelta

from cairn import Client, Worker, activity, workflow
from cairn.client import Schedule, ScheduleActionStartWorkflow, ScheduleSpec


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
    async def run(self, name: str) -> None:
        result = await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
        )
        workflow.logger.info("Result: %s", result)


async def main(url: str | None = None, stop: asyncio.Event | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-cron-task-queue"],
        workflows=[GreetingWorkflow],
        activities=[compose_greeting],
    ):
        print("Running workflow once a minute")

        # While the worker is running, use the client to start the workflow.
        # Note, in many production setups, the client would be in a completely
        # separate process from the worker.
        await client.create_schedule(
            "hello-cron-workflow-id",
            Schedule(
                action=ScheduleActionStartWorkflow(
                    GreetingWorkflow.run,
                    "World",
                    id="hello-cron-workflow-id",
                    task_queue="hello-cron-task-queue",
                ),
                spec=ScheduleSpec(cron_expressions=["* * * * *"]),
            ),
        )

        # Wait forever (or until the caller stops it)
        await (stop.wait() if stop is not None else asyncio.Future())
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
