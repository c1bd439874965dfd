"""Port of samples-python updatable_timer/ (updatable_timer_lib.py, workflow.py, starter.py,
wake_up_time_updater.py, worker.py) in one module.

The sample's timer is changed by a signal; its library class ports as is. Temporal's
workflow class (``@workflow.init``, ``@workflow.run``, ``@workflow.signal``,
``@workflow.query``) becomes Cairn's function form (``set_signal_handler``,
``set_query_handler``); ``exceptions.WorkflowAlreadyStartedError`` is Cairn's
``WorkflowAlreadyStarted``; ``handle.result_run_id`` is ``handle.run_id``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from cairn import Client, Worker, WorkflowAlreadyStarted, workflow

TASK_QUEUE = "updatable-timer"


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
            except TimeoutError:
                # checks condition at the beginning of the loop
                continue
        workflow.logger.info("sleep_until completed")

    def update_wake_up_time(self, wake_up_time: datetime) -> None:
        workflow.logger.info(f"update_wake_up_time:  {wake_up_time}")
        self.wake_up_time = wake_up_time
        self.wake_up_time_updated = True

    def get_wake_up_time(self) -> datetime:
        return self.wake_up_time


@workflow.defn(name="Workflow")
async def updatable_timer_workflow(wake_up_time: float) -> None:
    timer = UpdatableTimer(datetime.fromtimestamp(wake_up_time, tz=UTC))

    async def update_wake_up_time(wake_up_time: float) -> None:
        workflow.logger.info(f"update_wake_up_time: {wake_up_time}")

        timer.update_wake_up_time(datetime.fromtimestamp(wake_up_time, tz=UTC))

    def get_wake_up_time() -> float:
        workflow.logger.info("get_wake_up_time")
        return float(timer.get_wake_up_time().timestamp())

    workflow.set_signal_handler("update_wake_up_time", update_wake_up_time)
    workflow.set_query_handler("get_wake_up_time", get_wake_up_time)
    await timer.sleep()


# starter.py
async def starter_main(client: Client) -> None:
    try:
        handle = await client.start(
            updatable_timer_workflow,
            (datetime.now() + timedelta(days=1)).timestamp(),
            id="updatable-timer-workflow",
            queue=TASK_QUEUE,
        )
        logging.info(f"Workflow started: run_id={handle.run_id}")
    except WorkflowAlreadyStarted as e:
        logging.info(f"Workflow already running: workflow_id={e.workflow_id}, run_id={e.run_id}")


# wake_up_time_updater.py
async def updater_main(client: Client) -> None:
    handle = client.get_handle("updatable-timer-workflow")
    # signal workflow about the wake up time change
    await handle.signal(
        "update_wake_up_time",
        (datetime.now() + timedelta(seconds=10)).timestamp(),
    )

    logging.info("Updated wake up time to 10 seconds from now")


# worker.py
async def worker_main(url: str | None, interrupt_event: asyncio.Event) -> None:
    async with Worker(url, workflows=[updatable_timer_workflow], queues=[TASK_QUEUE]):
        logging.info("Worker started, ctrl+c to exit")
        # Wait until interrupted
        await interrupt_event.wait()
        logging.info("Interrupt received, shutting down...")
