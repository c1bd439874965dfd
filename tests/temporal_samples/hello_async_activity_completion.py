"""Temporal's samples-python ``hello/hello_async_activity_completion.py``, ported to Cairn.

The logic is the sample's; the API is Cairn's:
- ``activity.raise_complete_async()``, ``activity.info().task_token`` and
  ``client.get_async_activity_handle(task_token=...)`` with ``heartbeat()`` and
  ``complete()`` keep their Temporal names (the token is a ``str``, not ``bytes``);
- Cairn registers activity functions, not bound methods: ``GreetingComposer.activities()``
  wraps the method ``compose_greeting`` in a function of the same name that calls it;
- the workflow is a function (``@workflow.defn async def``), which calls the activity by its
  name (``execute_activity_method`` has no Cairn equivalent);
- ``Client.connect()`` reads ``CAIRN_DATABASE_URL``; ``Worker(queues=[...])`` runs in-process
  as ``async with``; ``client.start(...)`` then ``handle.result()`` is ``execute_workflow``.
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cairn import Client, Worker, activity, workflow

TASK_QUEUE = "hello-async-activity-completion-task-queue"


@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


class GreetingComposer:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def compose_greeting(self, input: ComposeGreetingInput) -> str:
        # Schedule a task to complete this asynchronously. This could be done in
        # a completely different process or system.
        print("Completing activity asynchronously")
        # Tasks stored by asyncio are weak references and therefore can get GC'd
        # which can cause warnings like "Task was destroyed but it is pending!".
        # So we store the tasks ourselves.
        # See https://docs.python.org/3/library/asyncio-task.html#creating-tasks,
        # https://bugs.python.org/issue21163 and others.
        _ = asyncio.create_task(  # noqa: RUF006  (the sample's line, kept as it is)
            self.complete_greeting(activity.info().task_token, input)
        )

        # Raise the complete-async error which will complete this function but
        # does not consider the activity complete from the workflow perspective
        activity.raise_complete_async()

    async def complete_greeting(
        self, task_token: str, input: ComposeGreetingInput
    ) -> None:
        # Let's wait three seconds, heartbeating each second. Note, heartbeating
        # during async activity completion is done via the client directly. It
        # is often important to heartbeat so the server can know when an
        # activity has crashed.
        handle = self.client.get_async_activity_handle(task_token=task_token)
        for _ in range(0, 3):
            print("Waiting one second...")
            await handle.heartbeat()
            await asyncio.sleep(1)

        # Complete using the handle
        await handle.complete(f"{input.greeting}, {input.name}!")

    def activities(self) -> list[Any]:
        @activity.defn(name="compose_greeting")
        async def compose_greeting(input: ComposeGreetingInput) -> str:
            return await self.compose_greeting(input)

        return [compose_greeting]


@workflow.defn(name="GreetingWorkflow")
async def greeting_workflow(name: str) -> str:
    # Reference the activity by its name (the method is not a registered function)
    return await workflow.execute_activity(
        "compose_greeting",
        ComposeGreetingInput("Hello", name),
        start_to_close_timeout=timedelta(seconds=10),
        heartbeat_timeout=timedelta(seconds=2),
    )


async def main() -> None:
    # Start client
    client = await Client.connect()

    # Run a worker for the workflow
    composer = GreetingComposer(client)
    async with Worker(
        queues=[TASK_QUEUE],
        workflows=[greeting_workflow],
        activities=composer.activities(),
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        handle = await client.start(
            greeting_workflow,
            "World",
            id="hello-async-activity-completion-workflow-id",
            queue=TASK_QUEUE,
        )
        result = await handle.result()
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
