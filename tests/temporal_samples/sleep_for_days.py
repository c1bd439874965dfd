"""Port of samples-python sleep_for_days/ (activities.py, workflows.py, starter.py,
worker.py) in one module: a workflow that runs until signalled ``complete``, sending an
email every 30 days.

The API changes: the imports (``from cairn import ...``; no
``workflow.unsafe.imports_passed_through()``, Cairn has no sandbox to pass imports through);
``activity.logger`` is a module logger; ``client.start_workflow(..., task_queue=)`` is
``client.start(..., queue=)``; the starter takes the database URL (or a client) instead of
Temporal's connection config, and the worker is ``Worker(url, queues=[...], ...)``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from cairn import Client, Worker, activity, workflow

TASK_QUEUE = "sleep-for-days-task-queue"

logger = logging.getLogger("sleep_for_days")


# ---------------------------------------------------------------- activities.py


@dataclass
class SendEmailInput:
    email_msg: str


@activity.defn()
async def send_email(input: SendEmailInput) -> str:
    """
    A stub Activity for sending an email.
    """
    result = f"Email message: {input.email_msg}, sent"
    logger.info(result)
    return result


# ---------------------------------------------------------------- workflows.py


@workflow.defn()
class SleepForDaysWorkflow:
    def __init__(self) -> None:
        self.is_complete = False

    @workflow.run
    async def run(self) -> str:
        while not self.is_complete:
            await workflow.execute_activity(
                send_email,
                SendEmailInput("30 days until the next email"),
                start_to_close_timeout=timedelta(seconds=10),
            )
            await workflow.wait(
                [
                    asyncio.create_task(workflow.sleep(timedelta(days=30))),
                    asyncio.create_task(
                        workflow.wait_condition(lambda: self.is_complete)
                    ),
                ],
                return_when=asyncio.FIRST_COMPLETED,
            )
        return "done!"

    @workflow.signal
    def complete(self):
        self.is_complete = True


# ---------------------------------------------------------------- starter.py


async def starter_main(url: str | None = None, client: Client | None = None) -> None:
    if not client:
        client = await Client.connect(url)

    wf_handle = await client.start(
        SleepForDaysWorkflow.run,
        id=f"sleep-for-days-workflow-id-{uuid.uuid4()}",
        queue=TASK_QUEUE,
    )
    # Wait for workflow completion (runs indefinitely until it receives a signal)
    print(await wf_handle.result())


# ---------------------------------------------------------------- worker.py


async def worker_main(url: str | None = None) -> None:
    worker = Worker(
        url,
        queues=[TASK_QUEUE],
        workflows=[SleepForDaysWorkflow],
        activities=[send_email],
    )

    await worker.run()
