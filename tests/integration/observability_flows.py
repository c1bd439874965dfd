"""Workflows and activities for the observability tests (also run by a worker subprocess:
``cairn worker -m observability_flows`` from this directory)."""

from __future__ import annotations

import logging
from datetime import timedelta

from cairn import RetryPolicy, activity, workflow

log = logging.getLogger("observability_flows")


@activity.defn
async def flaky_shout(text: str) -> str:
    """Fails its first attempt, then shouts."""
    info = activity.info()
    log.info("flaky_shout attempt %d", info.attempt)
    if info.attempt == 1:
        raise RuntimeError("first attempt fails")
    return text.upper()


@workflow.defn
async def traced_retry(text: str) -> str:
    """One activity that is retried once, then waits for a signal and runs it again."""
    workflow.logger.info("starting %s", text)
    first: str = await workflow.execute_activity(
        flaky_shout, text, start_to_close_timeout=timedelta(seconds=10),
        retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3))
    await workflow.wait_signal("go")
    second: str = await workflow.execute_activity(
        flaky_shout, text + "!", start_to_close_timeout=timedelta(seconds=10),
        retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3))
    return first + " " + second

