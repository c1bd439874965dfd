"""Workflows the database-fault tests run (``cairn worker -m fault_flows``, cwd = this
directory): an activity retried once inside a schedule-to-close budget, and an activity
that takes a while (a run still open when the database goes away)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from cairn import ApplicationError, RetryPolicy, activity, workflow


@activity.defn
async def fails_once(tag: str) -> dict[str, float]:
    """Fails its first attempt; the second returns its attempt and this host's clocks."""
    if activity.info().attempt == 1:
        raise ApplicationError(f"{tag}: the first attempt fails", type="Transient")
    return {"attempt": activity.info().attempt, "time": time.time(), "now": datetime.now(UTC).timestamp()}


@workflow.defn
async def retried_in_budget(tag: str) -> dict[str, float]:
    """One retry, 0.2 s after the first attempt, well inside a 600 s schedule-to-close budget."""
    return await workflow.execute_activity(
        fails_once, tag, start_to_close_timeout=10, schedule_to_close_timeout=600,
        retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.2), jitter=0.0))


@activity.defn
async def pause(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@workflow.defn
async def paused(seconds: float) -> float:
    return await workflow.execute_activity(pause, seconds, start_to_close_timeout=120)
