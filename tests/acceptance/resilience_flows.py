"""Workflows and activities for the multi-process resilience tests (``cairn worker -m
resilience_flows``). Activities write each call they really make to
``public.resilience_calls`` (created by the test), from whichever worker process runs them."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import psycopg

from cairn import ApplicationError, RetryPolicy, activity, workflow
from cairn.breakers import BreakerConfig
from cairn.ratelimits import reserve_or_reschedule, settle

# Opens after 2 failures in a row; half-open 1 s later with 2 probes cluster-wide.
PROBED = BreakerConfig(name="flaky", window="count", window_size=2, minimum_calls=2, failure_rate_threshold=50,
                       recovery_timeout=1.0, recovery_multiplier=1.0, permitted_calls_in_half_open=2,
                       probe_lease_seconds=30)
RATE_LIMIT = 4          # calls per window, fleet-wide
RATE_WINDOW_SECONDS = 3.0
FAST = RetryPolicy(initial_interval=timedelta(seconds=0.05), maximum_interval=timedelta(seconds=0.2), jitter=0.2)


async def _record(kind: str, window_start: object = None) -> None:
    async with await psycopg.AsyncConnection.connect(os.environ["FLOWS_DB_URL"], autocommit=True) as conn:
        await conn.execute("INSERT INTO public.resilience_calls (kind, pid, window_start) VALUES (%s, %s, %s)",
                           (kind, os.getpid(), window_start))


@activity.defn(breaker=PROBED)
async def always_down(i: int) -> None:
    await _record("probe")
    # A probe outlasts the spread of the refused calls' return (BREAKER_SPREAD_SECONDS), so a
    # second caller reaches the half-open breaker while the first still holds its slot: the
    # limit is contended in every period, not only when two calls happen to come back together.
    await asyncio.sleep(1.5)
    raise ApplicationError(f"the dependency is down ({i})")


@workflow.defn
async def hammer(i: int) -> None:
    await workflow.execute_activity(always_down, i, start_to_close_timeout=10, retry_policy=FAST,
                                    throttle_budget=3600)


@activity.defn
async def limited(i: int) -> int:
    async with await psycopg.AsyncConnection.connect(os.environ["FLOWS_DB_URL"], autocommit=True) as conn:
        r = await reserve_or_reschedule(conn, "fake:model", rpm=RATE_LIMIT, tpm=None, max_concurrency=2, tokens=10,
                                        window_seconds=RATE_WINDOW_SECONDS)
        try:
            # The call, on the reservation's own session: a new connection here took longer than
            # the limiter's send margin (60 ms of a 3 s window) on a loaded host, so the recorded
            # call times drifted past it and a span of the window seemed to hold 5 calls.
            await conn.execute("INSERT INTO public.resilience_calls (kind, pid, window_start) VALUES (%s, %s, %s)",
                               ("limited", os.getpid(), r.window_start))
        finally:
            await settle(conn, r, tokens=7)
    return i


@workflow.defn
async def rate_limited(i: int) -> int:
    return int(await workflow.execute_activity(limited, i, start_to_close_timeout=10, retry_policy=FAST,
                                               throttle_budget=600))
