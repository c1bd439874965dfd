"""Port of samples-python hello/hello_parallel_activity.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; there is no ``activity_executor`` (a worker runs
plain ``def`` activities in its own thread pool); ``client.execute_workflow`` is
``client.execute``. ``asyncio.gather`` of five activities is the sample's.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cairn import Client, Worker, activity, workflow


@activity.defn
def say_hello_activity(name: str) -> str:
    return f"Hello, {name}!"


@workflow.defn
class SayHelloWorkflow:
    @workflow.run
    async def run(self) -> list[str]:
        # Run 5 activities at the same time
        results = await asyncio.gather(
            workflow.execute_activity(
                say_hello_activity, "user1", start_to_close_timeout=timedelta(seconds=5)
            ),
            workflow.execute_activity(
                say_hello_activity, "user2", start_to_close_timeout=timedelta(seconds=5)
            ),
            workflow.execute_activity(
                say_hello_activity, "user3", start_to_close_timeout=timedelta(seconds=5)
            ),
            workflow.execute_activity(
                say_hello_activity, "user4", start_to_close_timeout=timedelta(seconds=5)
            ),
            workflow.execute_activity(
                say_hello_activity, "user5", start_to_close_timeout=timedelta(seconds=5)
            ),
        )
        # Sort the results because they can complete in any order
        return sorted(results)


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-parallel-activity-task-queue"],
        workflows=[SayHelloWorkflow],
        activities=[say_hello_activity],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        result = await client.execute(
            SayHelloWorkflow.run,
            id="hello-parallel-activity-workflow-id",
            queue="hello-parallel-activity-task-queue",
        )
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
