"""Workflows for the placement tests with worker processes (``cairn worker -m placement_flows``):
runs of a flooding fairness key A and of a key B whose activity retry, or later workflow
task, must keep its place (tests/acceptance/test_placement_processes.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cairn import ApplicationError, RetryPolicy, activity, workflow

QUEUE = "placement"  # the activities' queue: a worker serving only `default` leaves them waiting
# What run B does after its signal: "ok" returns; "hang" runs a local activity that waits for
# a file, holding its worker's batch (and so B's task lock) until the worker is killed. Set
# by ``-m placement_hang`` (a module that changes it at import), not by the workflow's input:
# the same history runs either way, since a killed batch records nothing.
MODE = "ok"


@activity.defn
async def step(tag: str, gate: str) -> str:
    """B's first attempt fails (its retry is booked: 0025); A's wait for the file ``gate``."""
    if tag.startswith("b"):
        if activity.info().attempt == 1:
            raise ApplicationError("B's first attempt fails")
        return tag
    while not Path(gate).exists():  # noqa: ASYNC240  (a stat in a test's poll loop)
        activity.heartbeat()
        await asyncio.sleep(0.05)
    return tag


@workflow.defn
async def one_step(tag: str, gate: str) -> str:
    # B's retry waits 4 s (jitter 10 %): time for the test to kill the worker that booked it.
    return str(await workflow.execute_activity(
        step, tag, gate, start_to_close_timeout=120, heartbeat_timeout=30, queue=QUEUE,
        retry_policy=RetryPolicy(initial_interval=4, maximum_attempts=3)))


@activity.defn
async def hang(marker: str) -> str:
    """A local activity: says it runs (the file ``marker``), then waits for ever."""
    Path(marker).touch()  # noqa: ASYNC240  (one stat-sized write in a test)
    while True:  # noqa: ASYNC110  (the worker is killed meanwhile)
        await asyncio.sleep(0.05)


@workflow.defn
async def chain(tag: str, marker: str) -> str:
    """A's runs return at once; B's waits for the signal ``go``, then (MODE) returns or hangs."""
    if tag.startswith("a"):
        return tag
    await workflow.wait_signal("go")
    if MODE == "hang":
        await workflow.execute_local_activity(hang, marker, start_to_close_timeout=20)
    return tag
