"""Workflows and activities of the cairn benchmark (imported by bench/cairn_worker.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cairn import RetryPolicy, activity, workflow

TIMEOUT = timedelta(seconds=60)
# W6: a lost attempt is retried at once (the default backs off 1 s first).
FAST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=0)


@activity.defn
async def inc(x: int) -> int:
    """The trivial activity: no I/O, no sleep."""
    return x + 1


@workflow.defn
async def one_step(x: int) -> int:
    """W1 and W3: one activity."""
    result: int = await workflow.execute_activity(inc, x, start_to_close_timeout=TIMEOUT)
    return result


@workflow.defn
async def sequence(x: int, steps: int) -> int:
    """W2 and W5: ``steps`` sequential activities."""
    for _ in range(steps):
        x = await workflow.execute_activity(inc, x, start_to_close_timeout=TIMEOUT)
    return x


@workflow.defn
async def fan_out(x: int, width: int) -> int:
    """W4: ``width`` activities in parallel, gathered."""
    handles = [workflow.start_activity(inc, x + i, start_to_close_timeout=TIMEOUT) for i in range(width)]
    results = await asyncio.gather(*handles)
    return sum(results)


@workflow.defn
async def forever(x: int) -> int:
    """W6: short steps for ever (the benchmark terminates the runs)."""
    while True:
        x = await workflow.execute_activity(inc, x, start_to_close_timeout=TIMEOUT, retry_policy=FAST_RETRY)


@workflow.defn
async def parked(x: int) -> int:
    """Memory: a workflow waiting on a long durable timer, live in the worker's cache."""
    await workflow.sleep(timedelta(hours=10))
    return x
