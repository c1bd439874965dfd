"""Port of samples-python hello/hello_continue_as_new.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.execute_workflow`` is
``client.execute`` (which, like Temporal's, follows the chain of runs to the last one).
"""

from __future__ import annotations

import asyncio
import logging

from cairn import Client, Worker, workflow


@workflow.defn
class LoopingWorkflow:
    @workflow.run
    async def run(self, iteration: int) -> None:
        if iteration == 10:
            return
        workflow.logger.info("Running workflow iteration %s", iteration)
        await asyncio.sleep(1)
        workflow.continue_as_new(iteration + 1)


async def main(url: str | None = None) -> None:
    # Enable logging for this sample
    logging.basicConfig(level=logging.INFO)

    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-continue-as-new-task-queue"],
        workflows=[LoopingWorkflow],
    ):
        # While the worker is running, use the client to run the workflow. Note,
        # in many production setups, the client would be in a completely
        # separate process from the worker.
        await client.execute(
            LoopingWorkflow.run,
            0,
            id="hello-continue-as-new-workflow-id",
            queue="hello-continue-as-new-task-queue",
        )
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
