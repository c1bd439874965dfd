"""Workflows for the pause tests with worker processes (``cairn worker -m pause_flows``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from cairn import RetryPolicy, activity, workflow


@activity.defn
async def hold(path: str) -> str:
    """Runs until the file at ``path`` exists (heartbeating), so a test can kill its worker mid-attempt."""
    while not Path(path).exists():  # noqa: ASYNC240  (a stat in a test's poll loop)
        activity.heartbeat()
        await asyncio.sleep(0.05)
    return f"held {Path(path).name} on attempt {activity.info().attempt}"


@activity.defn
async def step(tag: str) -> str:
    return f"done {tag}"


@activity.defn
async def needs_file(path: str) -> str:
    """Fails until the file at ``path`` exists: the cause an operator fixes."""
    if not Path(path).exists():  # noqa: ASYNC240  (one stat)
        raise ConnectionError(f"{path} is missing")
    return f"found it on attempt {activity.info().attempt}"


@workflow.defn
async def held_then_signal(path: str) -> list[str]:
    got: list[str] = []
    workflow.set_signal_handler("go", got.append)
    got.insert(0, await workflow.execute_activity(hold, path, start_to_close_timeout=120))
    await workflow.wait_condition(lambda: len(got) >= 2)
    got.append(await workflow.execute_activity(step, "after", start_to_close_timeout=10))
    return got


@workflow.defn
async def one_step(tag: str) -> str:
    return await workflow.execute_activity(step, tag, start_to_close_timeout=10)


@workflow.defn
async def until_fixed(path: str) -> str:
    return await workflow.execute_activity(
        needs_file, path, start_to_close_timeout=10,
        retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.1), maximum_attempts=3, jitter=0,
                                 on_exhausted="pause"))
