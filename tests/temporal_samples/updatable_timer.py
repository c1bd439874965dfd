"""Port of samples-python updatable_timer/ (updatable_timer_lib.py, workflow.py, starter.py,
wake_up_time_updater.py, worker.py) in one module.

The classes (the timer library, the workflow with ``@workflow.init``, ``@workflow.run``,
``@workflow.signal`` and ``@workflow.query``) and the logic are the sample's. The API
changes: imports from ``cairn``; each script's ``main`` takes the client (the worker's, the
database URL and the event it waits on) instead of making one from ``ClientConfig``;
``Worker`` takes the URL and ``queues`` instead of the client and ``task_queue``;
``client.start_workflow(..., task_queue=)`` is ``client.start(..., queue=)``,
``get_workflow_handle(workflow_id=)`` is ``get_handle``;
``exceptions.WorkflowAlreadyStartedError`` is ``WorkflowAlreadyStarted``;
``handle.result_run_id`` is ``handle.run_id``; ``timezone.utc`` is ``UTC``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from cairn import Client, Worker, WorkflowAlreadyStarted, workflow

TASK_QUEUE = "updatable-timer"


# updatable_timer_lib.py
class UpdatableTimer:
    def __init__(self, wake_up_time: datetime) -> None:
        self.wake_up_time = wake_up_time
        self.wake_up_time_updated = False

    async def sleep(self) -> None:
        workflow.logger.info(f"sleep_until: {self.wake_up_time}")
        while True:
            now = workflow.now()

            sleep_interval = self.wake_up_time - now
            if sleep_interval <= timedelta(0):
                break
            workflow.logger.info(f"Going to sleep for {sleep_interval}")

            try:
                self.wake_up_time_updated = False
                await workflow.wait_condition(
                    lambda: self.wake_up_time_updated,
                    timeout=sleep_interval,
                )
            except asyncio.TimeoutError:  # noqa: UP041  (the sample's name; the same class)
                # checks condition at the beginning of the loop
                continue
        workflow.logger.info("sleep_until completed")

    def update_wake_up_time(self, wake_up_time: datetime) -> None:
        workflow.logger.info(f"update_wake_up_time:  {wake_up_time}")
        self.wake_up_time = wake_up_time
        self.wake_up_time_updated = True

    def get_wake_up_time(self) -> datetime:
        return self.wake_up_time


# workflow.py
@workflow.defn
class Workflow:
    @workflow.init
    def __init__(self, wake_up_time: float) -> None:
        self.timer = UpdatableTimer(
            datetime.fromtimestamp(wake_up_time, tz=UTC)
        )

    @workflow.run
    async def run(self, wake_up_time: float) -> None:
        await self.timer.sleep()

    @workflow.signal
    async def update_wake_up_time(self, wake_up_time: float) -> None:
        workflow.logger.info(f"update_wake_up_time: {wake_up_time}")

        self.timer.update_wake_up_time(
            datetime.fromtimestamp(wake_up_time, tz=UTC)
        )

    @workflow.query
    def get_wake_up_time(self) -> float:
        workflow.logger.info("get_wake_up_time")
        return float(self.timer.get_wake_up_time().timestamp())


# starter.py
async def starter_main(client: Client) -> None:
    logging.basicConfig(level=logging.INFO)

    try:
        handle = await client.start(
            Workflow.run,
            (datetime.now() + timedelta(days=1)).timestamp(),
            id="updatable-timer-workflow",
            queue=TASK_QUEUE,
        )
        logging.info(f"Workflow started: run_id={handle.run_id}")
    except WorkflowAlreadyStarted as e:
        logging.info(f"Workflow already running: workflow_id={e.workflow_id}, run_id={e.run_id}")


# wake_up_time_updater.py
async def updater_main(client: Client) -> None:
    logging.basicConfig(level=logging.INFO)

    handle = client.get_handle("updatable-timer-workflow")
    # signal workflow about the wake up time change
    await handle.signal(
        Workflow.update_wake_up_time,
        (datetime.now() + timedelta(seconds=10)).timestamp(),
    )

    logging.info("Updated wake up time to 10 seconds from now")


# worker.py
async def worker_main(url: str | None, interrupt_event: asyncio.Event) -> None:
    logging.basicConfig(level=logging.INFO)

    async with Worker(
        url,
        queues=[TASK_QUEUE],
        workflows=[Workflow],
    ):
        logging.info("Worker started, ctrl+c to exit")
        # Wait until interrupted
        await interrupt_event.wait()
        logging.info("Interrupt received, shutting down...")
