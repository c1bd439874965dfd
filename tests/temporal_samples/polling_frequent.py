"""Port of samples-python polling/frequent/ (activities.py, workflows.py, run_worker.py,
run_frequent.py).

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.execute_workflow`` is
``client.execute``; no ``workflow.unsafe.imports_passed_through()`` (Cairn does not sandbox
imports). The sample's worker (``run_worker.py``, run until Ctrl-C) and starter
(``run_frequent.py``) are two processes; here :func:`main` runs the worker for the block
in which it runs the starter.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cairn import Client, Worker, activity, workflow

from .polling_test_service import ComposeGreetingInput, get_service_result

# ---------------------------------------------------------------- activities.py


@activity.defn
async def compose_greeting(input: ComposeGreetingInput) -> str:
    while True:
        try:
            try:
                result = await get_service_result(input)
                activity.logger.info(f"Exiting activity ${result}")
                return result
            except Exception:
                # swallow exception since service is down
                activity.logger.debug("Failed, trying again shortly", exc_info=True)

            activity.heartbeat("Invoking activity")
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            # activity was either cancelled or workflow was completed or worker shut down
            # if you need to clean up you can catch this.
            # Here we are just reraising the exception
            raise


# ---------------------------------------------------------------- workflows.py


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=2),
        )


# ---------------------------------------------------------------- run_worker.py + run_frequent.py


async def main(url: str | None = None) -> None:
    client = await Client.connect(url)

    async with Worker(
        url,
        queues=["frequent-activity-retry-task-queue"],
        workflows=[GreetingWorkflow],
        activities=[compose_greeting],
    ):
        result = await client.execute(
            GreetingWorkflow.run,
            "World",
            id="frequent-activity-retry",
            queue="frequent-activity-retry-task-queue",
        )
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
