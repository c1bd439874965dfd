"""Workflows for the priority, fairness and concurrency-limit tests with worker processes
(``cairn worker -m limit_flows``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cairn import activity, workflow


@activity.defn
async def hold(path: str, i: int) -> int:
    """Runs until the file at ``path`` exists (heartbeating), so a test can kill its worker mid-attempt."""
    while not Path(path).exists():  # noqa: ASYNC240  (a stat in a test's poll loop)
        activity.heartbeat()
        await asyncio.sleep(0.05)
    return i


@workflow.defn
async def fan_out(key: str, path: str, n: int) -> list[int]:
    """``n`` activities at once, each taking a slot of ``key`` (a limit of kind activity)."""
    calls = [workflow.execute_activity(hold, path, i, start_to_close_timeout=120, heartbeat_timeout=30,
                                       concurrency_key=key) for i in range(n)]
    return list(await asyncio.gather(*calls))


@workflow.defn
async def held_run(path: str) -> int:
    """One activity that waits for the file: a run of a key holds its slot meanwhile."""
    return int(await workflow.execute_activity(hold, path, 0, start_to_close_timeout=120, heartbeat_timeout=30))


@workflow.defn
async def quick(tag: str) -> str:
    return tag
