"""Workflows and activities that the acceptance tests run in real worker subprocesses.

Workers import this module with ``cairn worker -m flows`` (cwd = this directory). When
``FLOWS_DB_URL`` is set, activities record every attempt in ``public.attempts`` and apply
their side effect to ``public.effects`` keyed by the activity's idempotency key (a unique
constraint: a retried attempt finds its effect already there). The tables are created by
the ``side_tables`` fixture in this directory's conftest.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

import psycopg
from pydantic import BaseModel

from cairn import ApplicationError, RetryPolicy, activity, workflow

FAST_RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.2), maximum_interval=timedelta(seconds=1))


def _record(sql: str, params: tuple[object, ...]) -> None:
    url = os.environ.get("FLOWS_DB_URL")
    if not url:
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def _attempt_started(label: str) -> activity.ActivityInfo:
    info = activity.info()
    _record("INSERT INTO public.attempts (key, workflow_id, label, attempt, pid) VALUES (%s, %s, %s, %s, %s)",
            (info.idempotency_key, info.workflow_id, label, info.attempt, os.getpid()))
    return info


def _apply_effect(info: activity.ActivityInfo, label: str) -> None:
    _record("INSERT INTO public.effects (key, workflow_id, label, attempt) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key) DO NOTHING",
            (info.idempotency_key, info.workflow_id, label, info.attempt))


# ---------------------------------------------------------------- sequential steps


class StepArgs(BaseModel):
    index: int
    hold: float = 0.0   # on the first attempt only: block this long after the effect
    pause: float = 0.0  # on every attempt: take this long


class StepsInput(BaseModel):
    n: int
    hold_step: int = 0
    hold: float = 0.0
    pause: float = 0.0


@activity.defn
def step(args: StepArgs) -> str:
    """Records the attempt, applies its effect once, then (first attempt only) blocks."""
    label = f"step-{args.index}"
    info = _attempt_started(label)
    _apply_effect(info, label)
    if info.attempt == 1 and args.hold:
        time.sleep(args.hold)
    if args.pause:
        time.sleep(args.pause)
    return label


@workflow.defn
async def steps(spec: StepsInput) -> list[str]:
    out = []
    for i in range(1, spec.n + 1):
        args = StepArgs(index=i, hold=spec.hold if i == spec.hold_step else 0.0, pause=spec.pause)
        out.append(await workflow.execute_activity(step, args, start_to_close_timeout=120,
                                                   retry_policy=FAST_RETRY))
    return out


# ---------------------------------------------------------------- timers and draining


@workflow.defn
async def sleeper(seconds: float) -> str:
    await workflow.sleep(seconds)
    return "woke"


@activity.defn
async def nap(seconds: float) -> str:
    info = _attempt_started("nap")
    await asyncio.sleep(seconds)
    _apply_effect(info, "nap")
    return f"napped {seconds}"


@workflow.defn
async def slow(seconds: float) -> str:
    return await workflow.execute_activity(nap, seconds, start_to_close_timeout=120, retry_policy=FAST_RETRY)


# ---------------------------------------------------------------- for the CLI


class Person(BaseModel):
    name: str
    age: int


@activity.defn
async def hello(person: Person) -> str:
    return f"hello {person.name}, {person.age}"


@workflow.defn
async def greet(person: Person) -> str:
    return await workflow.execute_activity(hello, person, start_to_close_timeout=30, retry_policy=FAST_RETRY)


@workflow.defn
async def doomed(reason: str) -> str:
    raise ApplicationError(f"doomed: {reason}", type="Doomed")


# ---------------------------------------------------------------- a result JSON cannot carry


@activity.defn
async def not_a_number() -> float:
    return float("nan")


@workflow.defn
async def nan_result() -> float:
    return await workflow.execute_activity(not_a_number, start_to_close_timeout=10,
                                           retry_policy=RetryPolicy(maximum_attempts=2,
                                                                    initial_interval=timedelta(seconds=0.2)))


# ---------------------------------------------------------------- a saga compensating through a crash


class SagaTrip(BaseModel):
    steps: int = 4
    fail_at: int = 4  # this step fails non-retryably: the saga compensates the steps before it
    hold_undo: int = 0  # on its first attempt, this compensation blocks after its effect
    hold: float = 0.0
    pre_register: bool = False  # register each compensation before its step


@activity.defn
def saga_step(trip: SagaTrip, i: int) -> str:
    label = f"step-{i}"
    info = _attempt_started(label)
    if i == trip.fail_at:
        raise ApplicationError(f"step {i} failed", type="StepFailed", non_retryable=True)
    _apply_effect(info, label)
    return label


@activity.defn
def saga_undo(trip: SagaTrip, i: int) -> str:
    label = f"undo-{i}"
    info = _attempt_started(label)
    _apply_effect(info, label)
    if info.attempt == 1 and i == trip.hold_undo:
        time.sleep(trip.hold)
    return label


@workflow.defn
async def saga_trip(trip: SagaTrip) -> list[str]:
    done = []
    async with workflow.saga() as saga:
        for i in range(1, trip.steps + 1):
            if trip.pre_register:
                saga.compensate(saga_undo, trip, i, retry_policy=FAST_RETRY)
            done.append(await workflow.execute_activity(saga_step, trip, i, start_to_close_timeout=120,
                                                        retry_policy=FAST_RETRY))
            if not trip.pre_register:
                saga.compensate(saga_undo, trip, i, retry_policy=FAST_RETRY)
    return done
