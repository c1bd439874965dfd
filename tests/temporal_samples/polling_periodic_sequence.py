"""Port of samples-python polling/periodic_sequence/ (activities.py, workflows.py,
run_worker.py, run_periodic.py).

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.execute_workflow`` is
``client.execute``; no ``workflow.unsafe.imports_passed_through()``. The sample's worker and
starter processes are one :func:`main`. As in the sample, the service never comes up: the
child polls ten times a run, continues as new, and ``main`` never returns (the test stops it).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, NoReturn

from cairn import ActivityError, Client, RetryPolicy, Worker, activity, workflow

from .polling_test_service import ComposeGreetingInput

# ---------------------------------------------------------------- activities.py


@activity.defn
async def compose_greeting(input: Any) -> NoReturn:
    raise RuntimeError("Service is down")


# ---------------------------------------------------------------- workflows.py


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_child_workflow(
            ChildWorkflow.run,
            name,
        )


@workflow.defn
class ChildWorkflow:
    @workflow.run  # noqa: RET503 (the run ends in continue_as_new, which never returns)
    async def run(self, name: str) -> str:
        for _i in range(10):
            try:
                return await workflow.execute_activity(
                    compose_greeting,
                    ComposeGreetingInput("Hello", name),
                    start_to_close_timeout=timedelta(seconds=4),
                    retry_policy=RetryPolicy(
                        maximum_attempts=1,
                    ),
                )

            except ActivityError:
                workflow.logger.error("Activity failed, retrying in 1 seconds")
            await asyncio.sleep(1)

        workflow.continue_as_new(name)


# ---------------------------------------------------------------- run_worker.py + run_periodic.py


async def main(url: str | None = None) -> None:
    client = await Client.connect(url)

    async with Worker(
        url,
        queues=["periodic-retry-task-queue"],
        workflows=[GreetingWorkflow, ChildWorkflow],
        activities=[compose_greeting],
    ):
        result = await client.execute(
            GreetingWorkflow.run,
            "World",
            id="periodic-child-workflow-retry",
            queue="periodic-retry-task-queue",
        )
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
