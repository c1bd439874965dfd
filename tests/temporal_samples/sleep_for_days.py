"""Port of samples-python sleep_for_days/ (activities.py, workflows.py, starter.py,
worker.py) in one module: a workflow that runs until signalled ``complete``, sending an
email every 30 days.

The API changes: Temporal's class (``@workflow.defn class SleepForDaysWorkflow`` with
``@workflow.run`` and the ``@workflow.signal`` method ``complete``) becomes Cairn's function
form (the signal handler registered with ``workflow.set_signal_handler``, the flag in a
dict the handler closes over); ``workflow.wait`` (Temporal's deterministic
``asyncio.wait``) is ``asyncio.wait``, which Cairn's workflow loop runs deterministically;
``activity.logger`` is a module logger; the starter takes the database URL (or a client)
instead of Temporal's connection config, and the worker runs in process on the sample's
queue.
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


@workflow.defn(name="SleepForDaysWorkflow")
async def sleep_for_days_workflow() -> str:
    state = {"is_complete": False}

    def complete(_payload: object = None) -> None:
        state["is_complete"] = True

    workflow.set_signal_handler("complete", complete)

    while not state["is_complete"]:
        await workflow.execute_activity(
            send_email,
            SendEmailInput("30 days until the next email"),
            start_to_close_timeout=timedelta(seconds=10),
        )
        await asyncio.wait(
            [
                asyncio.create_task(workflow.sleep(timedelta(days=30))),
                asyncio.create_task(
                    workflow.wait_condition(lambda: state["is_complete"])
                ),
            ],
            return_when=asyncio.FIRST_COMPLETED,
        )
    return "done!"


# ---------------------------------------------------------------- starter.py


async def starter_main(url: str | None = None, client: Client | None = None) -> None:
    if not client:
        client = await Client.connect(url)

    wf_handle = await client.start(
        sleep_for_days_workflow,
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
        workflows=[sleep_for_days_workflow],
        activities=[send_email],
    )

    await worker.run()
