"""Workflows and activities the chaos workers run (``cairn worker -m chaos_flows``, cwd =
this directory).

Every activity attempt logs itself in ``chaos.attempts`` and applies its side effect to the
effects sink ``chaos.effects`` keyed by ``activity.info().idempotency_key`` (``ON CONFLICT
DO NOTHING``): the checker then proves one effect per step while attempts > 1 happened.
``chaos.finishes`` records every attempt that ran to its end with the process id, so a
zombie's late finishes are visible next to the attempt history actually recorded.
The sink's URL is ``CHAOS_SINK_URL``. On import, the ambiguous-commit fault wrapper is
installed if ``CAIRN_CHAOS_AMBIGUOUS`` asks for it (see chaos_faults).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import chaos_faults
import psycopg
from pydantic import BaseModel

from cairn import ApplicationError, RetryPolicy, activity, workflow

chaos_faults.install_from_env()

FAST_RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.2), maximum_interval=timedelta(seconds=1))


def _sink(statement: str, params: tuple[object, ...]) -> None:
    url = os.environ.get("CHAOS_SINK_URL")
    if url:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement, params)


def _work(kind: str, pause: float) -> None:
    """One attempt: logged, half the work, the effect (once per key), the other half."""
    info = activity.info()
    _sink("INSERT INTO chaos.attempts (run_id, seq, attempt) VALUES (%s, %s, %s)",
          (info.run_id, info.seq, info.attempt))
    time.sleep(pause / 2)
    _sink("INSERT INTO chaos.effects (idempotency_key, run_id, seq, attempt, kind) VALUES (%s, %s, %s, %s, %s) "
          "ON CONFLICT (idempotency_key) DO NOTHING", (info.idempotency_key, info.run_id, info.seq, info.attempt, kind))
    time.sleep(pause / 2)
    _sink("INSERT INTO chaos.finishes (run_id, seq, attempt, pid) VALUES (%s, %s, %s, %s)",
          (info.run_id, info.seq, info.attempt, os.getpid()))


# ---------------------------------------------------------------- chains of steps


class Step(BaseModel):
    index: int
    pause: float


class Chain(BaseModel):
    steps: int
    pause: float = 0.05


@activity.defn
def chaos_step(step: Step) -> int:
    """A synchronous step (a thread: a SIGSTOP freezes it mid-work, SIGCONT lets it finish)."""
    _work(f"step-{step.index}", step.pause)
    return step.index


@workflow.defn
async def chain(spec: Chain) -> list[int]:
    done = []
    for i in range(1, spec.steps + 1):
        done.append(await workflow.execute_activity(chaos_step, Step(index=i, pause=spec.pause),
                                                    start_to_close_timeout=300, retry_policy=FAST_RETRY))
    return done


# ---------------------------------------------------------------- sagas


class Trip(BaseModel):
    steps: int
    fail_at: int  # 0: every step succeeds; else this step fails for good and the saga compensates
    pause: float = 0.05


@activity.defn
def book(trip: Trip, i: int) -> str:
    if i == trip.fail_at:
        activity_info = activity.info()
        _sink("INSERT INTO chaos.attempts (run_id, seq, attempt) VALUES (%s, %s, %s)",
              (activity_info.run_id, activity_info.seq, activity_info.attempt))
        raise ApplicationError(f"step {i} failed", type="StepFailed", non_retryable=True)
    _work(f"book-{i}", trip.pause)
    return f"book-{i}"


@activity.defn
def unbook(trip: Trip, i: int) -> str:
    _work(f"unbook-{i}", trip.pause)
    return f"unbook-{i}"


@workflow.defn
async def trip(spec: Trip) -> list[str]:
    done = []
    async with workflow.saga() as saga:
        for i in range(1, spec.steps + 1):
            done.append(await workflow.execute_activity(book, spec, i, start_to_close_timeout=300,
                                                        retry_policy=FAST_RETRY))
            saga.compensate(unbook, spec, i, retry_policy=FAST_RETRY)
    return done


WORKFLOWS = [chain, trip]
