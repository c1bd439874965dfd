"""Port of samples-python polling/infrequent/ (activities.py, workflows.py, run_worker.py,
run_infrequent.py).

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.execute_workflow`` is
``client.execute``; no ``workflow.unsafe.imports_passed_through()``. The sample's worker and
starter processes are one :func:`main`. The poll interval (the retry policy's
``initial_interval``, 60 s in the sample) is the workflow's second argument, 60 s by default,
so that a test can poll every fraction of a second; Cairn's default retry jitter is set to 0
so that the retries come exactly on the interval, as Temporal's (which has no jitter).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cairn import Client, RetryPolicy, Worker, activity, workflow

from .polling_test_service import ComposeGreetingInput, get_service_result

# ---------------------------------------------------------------- activities.py


@activity.defn
async def compose_greeting(input: ComposeGreetingInput) -> str:
    # If this raises an exception because it's not done yet, the activity will
    # continually be scheduled for retry
    return await get_service_result(input)


# ---------------------------------------------------------------- workflows.py


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str, poll_interval_seconds: float = 60) -> str:
        return await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=2),
            retry_policy=RetryPolicy(
                backoff_coefficient=1.0,
                initial_interval=timedelta(seconds=poll_interval_seconds),
                jitter=0,
            ),
        )


# ---------------------------------------------------------------- run_worker.py + run_infrequent.py


async def main(url: str | None = None, poll_interval_seconds: float = 60) -> None:
    client = await Client.connect(url)

    async with Worker(
        url,
        queues=["infrequent-activity-retry-task-queue"],
        workflows=[GreetingWorkflow],
        activities=[compose_greeting],
    ):
        result = await client.execute(
            GreetingWorkflow.run,
            "World",
            poll_interval_seconds,
            id="infrequent-activity-retry",
            queue="infrequent-activity-retry-task-queue",
        )
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
