"""Port of samples-python hello/hello_activity_method.py.

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.execute_workflow`` is
``client.execute``. The activity stays a method of an object holding the database client,
registered bound (``activities=[my_activities.do_database_thing]``) and called with
``workflow.execute_activity_method``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cairn import Client, Worker, activity, workflow


class MyDatabaseClient:
    async def run_database_update(self) -> None:
        print("Database update executed")


class MyActivities:
    def __init__(self, db_client: MyDatabaseClient) -> None:
        self.db_client = db_client

    @activity.defn
    async def do_database_thing(self) -> None:
        await self.db_client.run_database_update()


@workflow.defn
class MyWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity_method(
            MyActivities.do_database_thing,
            start_to_close_timeout=timedelta(seconds=10),
        )


async def main(url: str | None = None) -> None:
    # Start client
    client = await Client.connect(url)

    # Create our database client that can then be used in the activity
    db_client = MyDatabaseClient()
    # Instantiate our class containing state that can be referenced from
    # activity methods
    my_activities = MyActivities(db_client)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["hello-activity-method-task-queue"],
        workflows=[MyWorkflow],
        activities=[my_activities.do_database_thing],
    ):
        # While the worker is running, use the client to run the workflow and
        # print out its result. Note, in many production setups, the client
        # would be in a completely separate process from the worker.
        await client.execute(
            MyWorkflow.run,
            id="hello-activity-method-workflow-id",
            queue="hello-activity-method-task-queue",
        )
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
