"""Port of samples-python hello/hello_exception.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; there is no ``activity_executor`` (a worker runs
plain ``def`` activities in its own thread pool); ``client.execute_workflow`` is
``client.execute``; Temporal's ``WorkflowFailureError`` is ``WorkflowFailure`` and its
``FailureError`` (an error carrying the recorded failure) is Cairn's ``WorkflowFailure``
too, whose ``failure.stack_trace`` is ``.stack``. The cause chain is Temporal's: the run's
failure, caused by the workflow's ``ActivityError``, caused by the activity's ``RuntimeError``
(each a ``WorkflowFailure`` with its recorded stack).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from cairn import Client, RetryPolicy, Worker, WorkflowFailure, activity, workflow


@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


@activity.defn
def compose_greeting(input: ComposeGreetingInput) -> NoReturn:
    # Always raise exception
    raise RuntimeError(f"Greeting exception: {input.greeting}, {input.name}!")


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=2),
        )


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-exception-task-queue"],
        workflows=[GreetingWorkflow],
        activities=[compose_greeting],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        try:
            await client.execute(
                GreetingWorkflow.run,
                "World",
                id="hello-exception-workflow-id",
                queue="hello-exception-task-queue",
            )
        except WorkflowFailure as err:
            # Temporal's remote failures carry the stack trace of where they
            # occurred, but it is not in the message; append it
            append_temporal_stack(err)

            logging.exception("Got workflow failure")
    await client.close()


def append_temporal_stack(exc: BaseException | None) -> None:
    while exc:
        # Only append if it doesn't appear already there
        if (
            isinstance(exc, WorkflowFailure)
            and exc.stack
            and len(exc.args) == 1
            and "\nStack:\n" not in exc.args[0]
        ):
            exc.args = (f"{exc}\nStack:\n{exc.stack.rstrip()}",)
        exc = exc.__cause__


if __name__ == "__main__":
    asyncio.run(main())
