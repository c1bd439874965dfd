"""Port of samples-python hello/hello_cron.py.

Temporal's ``start_workflow(..., cron_schedule="* * * * *")`` becomes a Cairn schedule with
that cron expression (Temporal itself recommends schedules over cron workflows); the worker
runs in process, on the sample's queue. ``main`` waits until ``stop`` is set instead of
forever, so a test can end it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from cairn import Client, Worker, activity, workflow
from cairn.client import Schedule, ScheduleActionStartWorkflow, ScheduleSpec

QUEUE = "hello-cron-task-queue"


@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


@activity.defn
def compose_greeting(input: ComposeGreetingInput) -> str:
    return f"{input.greeting}, {input.name}!"


@workflow.defn(name="GreetingWorkflow")
async def greeting_workflow(name: str) -> None:
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
    async with Worker(url, workflows=[greeting_workflow], activities=[compose_greeting], queues=[QUEUE]):
        print("Running workflow once a minute")

        # While the worker is running, use the client to start the workflow.
        # Note, in many production setups, the client would be in a completely
        # separate process from the worker.
        await client.create_schedule(
            "hello-cron-workflow-id",
            Schedule(
                action=ScheduleActionStartWorkflow(greeting_workflow, "World", id="hello-cron-workflow-id",
                                                   task_queue=QUEUE),
                spec=ScheduleSpec(cron_expressions=["* * * * *"]),
            ),
        )

        # Wait forever (or until the caller stops it)
        await (stop.wait() if stop is not None else asyncio.Future())
    await client.close()
