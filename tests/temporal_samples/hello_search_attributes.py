"""Port of samples-python hello/hello_search_attributes.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.start_workflow`` is
``client.start``. Cairn's search attributes need no registration on a server:
``CustomKeywordField`` is any name, its keyword list a JSON list.
"""

from __future__ import annotations

import asyncio

from cairn import Client, Worker, workflow


@workflow.defn
class GreetingWorkflow:
    @workflow.run
    async def run(self) -> None:
        # Wait a couple of seconds, then alter the keyword search attribute
        await asyncio.sleep(2)
        workflow.upsert_search_attributes({"CustomKeywordField": ["new-value"]})


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-search-attributes-task-queue"],
        workflows=[GreetingWorkflow],
    ):
        # While the worker is running, use the client to start the workflow.
        # Note, in many production setups, the client would be in a completely
        # separate process from the worker.
        handle = await client.start(
            GreetingWorkflow.run,
            id="hello-search-attributes-workflow-id",
            queue="hello-search-attributes-task-queue",
            # Start with a search attribute
            search_attributes={"CustomKeywordField": ["old-value"]},
        )

        # Show the search attribute value, wait a few seconds, then show it again
        print(
            "First search attribute values: ",
            (await handle.describe()).search_attributes.get("CustomKeywordField"),
        )
        await asyncio.sleep(3)
        print(
            "Second search attribute values: ",
            (await handle.describe()).search_attributes.get("CustomKeywordField"),
        )
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
