"""cairn.testing's time-skipping environment: a workflow's clock jumps to the next moment
something falls due while the test waits on a result, so days of timers, backoffs and
timeouts take seconds; never while an activity attempt runs; activities are mocked by
registering a replacement under their name; without the environment the clock seam adds
nothing (every statement reads the database's clock)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from cairn import activity, workflow
from cairn.errors import ActivityError, WorkflowTimedOutError
from cairn.options import RetryPolicy
from cairn.store import clock
from cairn.testing import WorkflowEnvironment
from support import events

DAY = 86_400.0


@workflow.defn
async def sleeper(days: int) -> list[str]:
    before = workflow.now()
    await workflow.sleep(timedelta(days=days))
    return [before.isoformat(), workflow.now().isoformat()]


async def test_a_90_day_sleep_finishes_in_seconds_with_workflow_time_90_days_on(db_url, sql):
    async with await WorkflowEnvironment.start_time_skipping(db_url) as env:
        async with env.worker(workflows=[sleeper]):
            started = await env.get_current_time()
            handle = await env.client.start(sleeper, 90, id="sleeper")
            before, after = await handle.result(timeout=60)
        from datetime import datetime
        elapsed = datetime.fromisoformat(after) - datetime.fromisoformat(before)
        assert elapsed >= timedelta(days=90)
        assert elapsed < timedelta(days=90, minutes=1)  # it jumped to the timer, not past it
        assert await env.get_current_time() - started >= timedelta(days=90)
    # The timer fired at its own moment, recorded in history.
    fired = [d for _, t, d in events(sql, str(handle.run_id)) if t == "TimerStarted"]
    assert len(fired) == 1
    assert clock.active() is False  # the environment handed the database back to its clock
