"""Port of samples-python schedules/ (your_dataobject, your_activities, your_workflows,
run_worker, start_schedule, describe_schedule, list_schedule, pause_schedule,
trigger_schedule, backfill_schedule, update_schedule, delete_schedule): one module, each
script's ``main`` a function named after it, taking the database URL.

The workflow class, the activity and the logic are the sample's. The API changes:
``temporalio.client`` becomes ``cairn.client`` (the same names: ``Schedule``,
``ScheduleActionStartWorkflow``, ``ScheduleSpec``, ``ScheduleIntervalSpec``, ``ScheduleState``,
``ScheduleBackfill``, ``ScheduleOverlapPolicy``, ``ScheduleUpdate``); ``Client.connect`` takes
a database URL (the sample's ``ClientConfig`` and host go); ``Worker`` takes the URL and
``queues`` instead of the client and ``task_queue``, and ``run_worker`` returns it (the script
awaits ``worker.run()``; the test runs it as ``async with``); ``datetime.utcnow()``
(deprecated) becomes ``datetime.now(UTC)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cairn import Client, Worker, activity, workflow
from cairn.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleBackfill,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

# ---------------------------------------------------------------- your_dataobject.py


@dataclass
class YourParams:
    greeting: str
    name: str


# ---------------------------------------------------------------- your_activities.py


@activity.defn
async def your_activity(input: YourParams) -> str:
    return f"{input.greeting}, {input.name}!"


# ---------------------------------------------------------------- your_workflows.py


@workflow.defn
class YourSchedulesWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(
            your_activity,
            YourParams("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
        )


# ---------------------------------------------------------------- run_worker.py


def run_worker(url: str | None = None) -> Worker:
    return Worker(
        url,
        queues=["schedules-task-queue"],
        workflows=[YourSchedulesWorkflow],
        activities=[your_activity],
    )


# ---------------------------------------------------------------- start_schedule.py


async def start_schedule(url: str | None = None) -> None:
    client = await Client.connect(url)

    await client.create_schedule(
        "workflow-schedule-id",
        Schedule(
            action=ScheduleActionStartWorkflow(
                YourSchedulesWorkflow.run,
                "my schedule arg",
                id="schedules-workflow-id",
                task_queue="schedules-task-queue",
            ),
            spec=ScheduleSpec(
                intervals=[ScheduleIntervalSpec(every=timedelta(minutes=2))]
            ),
            state=ScheduleState(note="Here's a note on my Schedule."),
        ),
    )
    await client.close()


# ---------------------------------------------------------------- describe_schedule.py


async def describe_schedule(url: str | None = None) -> None:
    client = await Client.connect(url)

    handle = client.get_schedule_handle(
        "workflow-schedule-id",
    )

    desc = await handle.describe()

    print(f"Returns the note: {desc.schedule.state.note}")
    await client.close()


# ---------------------------------------------------------------- list_schedule.py


async def list_schedule(url: str | None = None) -> None:
    client = await Client.connect(url)

    async for schedule in await client.list_schedules():
        print(f"List Schedule Info: {schedule.info}.")
    await client.close()


# ---------------------------------------------------------------- pause_schedule.py


async def pause_schedule(url: str | None = None) -> None:
    client = await Client.connect(url)

    handle = client.get_schedule_handle(
        "workflow-schedule-id",
    )

    await handle.pause(note="Pausing the schedule for now")
    await client.close()


# ---------------------------------------------------------------- trigger_schedule.py


async def trigger_schedule(url: str | None = None) -> None:
    client = await Client.connect(url)

    handle = client.get_schedule_handle(
        "workflow-schedule-id",
    )

    await handle.trigger()
    await client.close()


# ---------------------------------------------------------------- backfill_schedule.py


async def backfill_schedule(url: str | None = None) -> None:
    client = await Client.connect(url)

    handle = client.get_schedule_handle(
        "workflow-schedule-id",
    )
    now = datetime.now(UTC)
    await handle.backfill(
        ScheduleBackfill(
            start_at=now - timedelta(minutes=10),
            end_at=now - timedelta(minutes=9),
            overlap=ScheduleOverlapPolicy.ALLOW_ALL,
        ),
    )
    await client.close()


# ---------------------------------------------------------------- update_schedule.py


async def update_schedule(url: str | None = None) -> None:
    client = await Client.connect(url)

    handle = client.get_schedule_handle(
        "workflow-schedule-id",
    )

    async def update_schedule_simple(input: ScheduleUpdateInput) -> ScheduleUpdate:
        schedule_action = input.description.schedule.action

        if isinstance(schedule_action, ScheduleActionStartWorkflow):
            schedule_action.args = ["my new schedule arg"]
        return ScheduleUpdate(schedule=input.description.schedule)

    await handle.update(update_schedule_simple)
    await client.close()


# ---------------------------------------------------------------- delete_schedule.py


async def delete_schedule(url: str | None = None) -> None:
    client = await Client.connect(url)

    handle = client.get_schedule_handle(
        "workflow-schedule-id",
    )

    await handle.delete()
    await client.close()
