"""Port of samples-python hello/hello_signal.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.start_workflow`` is
``client.start``. The class, its ``asyncio.Queue`` and its signal methods are the sample's.
"""

from __future__ import annotations

import asyncio

from cairn import Client, Worker, workflow


@workflow.defn
class GreetingWorkflow:
    def __init__(self) -> None:
        self._pending_greetings: asyncio.Queue[str] = asyncio.Queue()
        self._exit = False

    @workflow.run
    async def run(self) -> list[str]:
        # Continually handle from queue or wait for exit to be received
        greetings: list[str] = []
        while True:
            # Wait for queue item or exit
            await workflow.wait_condition(
                lambda: not self._pending_greetings.empty() or self._exit
            )

            # Drain and process queue
            while not self._pending_greetings.empty():
                greetings.append(f"Hello, {self._pending_greetings.get_nowait()}")

            # Exit if complete
            if self._exit:
                return greetings

    @workflow.signal
    async def submit_greeting(self, name: str) -> None:
        await self._pending_greetings.put(name)

    @workflow.signal
    def exit(self) -> None:
        self._exit = True


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-signal-task-queue"],
        workflows=[GreetingWorkflow],
    ):
        # While the worker is running, use the client to start the workflow.
        # Note, in many production setups, the client would be in a completely
        # separate process from the worker.
        handle = await client.start(
            GreetingWorkflow.run,
            id="hello-signal-workflow-id",
            queue="hello-signal-task-queue",
        )

        # Send a few updates
        await handle.signal(GreetingWorkflow.submit_greeting, "user1")
        await handle.signal(GreetingWorkflow.submit_greeting, "user2")
        await handle.signal(GreetingWorkflow.submit_greeting, "user3")

        # Send exit
        await handle.signal(GreetingWorkflow.exit)

        # Show result
        result = await handle.result()
        print(f"Result: {result}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
