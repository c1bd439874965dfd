"""samples-python sleep_for_days/, ported, under the time-skipping environment: the sample's
own test (tests/sleep_for_days/workflow_test.py: the activity mocked to count its calls, 90
days skipped) as Temporal wrote it, and the starter, which prints what the workflow returns
once signalled ``complete``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from cairn import activity
from cairn.testing import WorkflowEnvironment
from support import events, wait_until

from . import sleep_for_days as sample
from .sleep_for_days import TASK_QUEUE, SendEmailInput, SleepForDaysWorkflow


async def test_sleep_for_days_workflow(db_url):
    num_activity_executions = 0

    # Mock out the activity to count executions
    @activity.defn(name="send_email")
    async def send_email_mock(input: SendEmailInput) -> str:
        nonlocal num_activity_executions
        num_activity_executions += 1
        return input.email_msg

    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, env.worker(
        queues=[TASK_QUEUE],
        workflows=[SleepForDaysWorkflow],
        activities=[send_email_mock],
    ):
        handle = await env.client.start(
            SleepForDaysWorkflow.run,
            id=str(uuid.uuid4()),
            queue=TASK_QUEUE,
        )

        start_time = await env.get_current_time()
        # Time-skip 5 minutes.
        await env.sleep(timedelta(minutes=5))
        # Check that the activity has been called, we're now waiting for the sleep to finish.
        assert num_activity_executions == 1
        # Time-skip 3 days.
        await env.sleep(timedelta(days=90))
        # Expect 3 more activity calls.
        assert num_activity_executions == 4
        # Send the signal to complete the workflow.
        await handle.signal(SleepForDaysWorkflow.complete)
        # Expect no more activity calls to have been made - workflow is complete.
        assert num_activity_executions == 4
        # Expect more than 90 days to have passed.
        assert (await env.get_current_time() - start_time) > timedelta(days=90)
        # (Cairn: and the run completes with what the sample returns.)
        assert await handle.result(timeout=60) == "done!"


async def test_the_starter_prints_done_once_signalled_after_90_virtual_days(db_url, sql, capsys, caplog):
    caplog.set_level(logging.INFO, logger="sleep_for_days")
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env, env.worker(
            queues=[TASK_QUEUE], workflows=[SleepForDaysWorkflow], activities=[sample.send_email]):
        with env.auto_time_skipping_disabled():  # the starter waits on the result: skip by hand
            starter = asyncio.create_task(sample.starter_main(client=env.client))
            run_id = await wait_until(lambda: sql(
                "SELECT run_id FROM cairn.runs WHERE workflow_type = 'SleepForDaysWorkflow'"), what="the run")
            await env.sleep(timedelta(days=90, minutes=5))
            await env.client.get_handle(sql("SELECT workflow_id FROM cairn.runs")[0][0]).signal("complete")
            await asyncio.wait_for(starter, 60)
    assert capsys.readouterr().out.splitlines() == ["done!"]
    # An email at the start and after each of three 30-day sleeps, each through the real activity.
    sent = [m for m in caplog.messages if m.startswith("Email message: ")]
    assert sent == ["Email message: 30 days until the next email, sent"] * 4
    types = [t for _, t, _ in events(sql, str(run_id[0][0]))]
    assert types.count("TimerStarted") == 4
    assert types.count("TimerFired") == 3
    assert types[-1] == "WorkflowCompleted"
