"""Port of samples-python hello/hello_cancellation.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; there is no ``activity_executor`` (a worker runs
plain ``def`` activities in its own thread pool); ``client.start_workflow`` is
``client.start``. Temporal's ``temporalio.exceptions.CancelledError`` (raised by
``activity.heartbeat()`` once the activity is cancelled) is ``asyncio.CancelledError``, and
its ``WorkflowFailureError`` is ``WorkflowFailure`` (``WorkflowCancelled`` is one).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from asyncio import CancelledError
from datetime import timedelta
from typing import NoReturn

from cairn import Client, Worker, WorkflowFailure, activity, workflow


@activity.defn
def never_complete_activity() -> NoReturn:
    # All long-running activities should heartbeat. Heartbeat is how
    # cancellation is delivered from the server.
    try:
        while True:
            print("Heartbeating activity")
            activity.heartbeat()
            time.sleep(1)
    except CancelledError:
        print("Activity cancelled")
        raise


@activity.defn
def cleanup_activity() -> None:
    print("Executing cleanup activity")


@workflow.defn
class CancellationWorkflow:
    @workflow.run
    async def run(self) -> None:
        # Execute the forever running activity, and do a cleanup activity when
        # it is complete (on error or cancel)
        try:
            await workflow.execute_activity(
                never_complete_activity,
                start_to_close_timeout=timedelta(seconds=1000),
                # Always set a heartbeat timeout for long-running activities
                heartbeat_timeout=timedelta(seconds=2),
            )
        finally:
            await workflow.execute_activity(
                cleanup_activity, start_to_close_timeout=timedelta(seconds=5)
            )


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-cancellation-task-queue"],
        workflows=[CancellationWorkflow],
        activities=[never_complete_activity, cleanup_activity],
    ):
        # While the worker is running, use the client to start the workflow.
        # Note, in many production setups, the client would be in a completely
        # separate process from the worker.
        handle = await client.start(
            CancellationWorkflow.run,
            id="hello-cancellation-workflow-id",
            queue="hello-cancellation-task-queue",
        )

        # Now that we've started, wait a couple of seconds then cancel it
        await asyncio.sleep(2)
        await handle.cancel()

        # Now wait on the result which we expect will fail since it was
        # cancelled
        try:
            await handle.result()
            raise RuntimeError("Should not succeed")
        except WorkflowFailure:
            print("Got expected exception: ", traceback.format_exc())
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
