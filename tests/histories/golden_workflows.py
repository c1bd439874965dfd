"""The workflow code that the golden histories next to this file were recorded from.

Do not change the workflows here without re-recording the histories (see ``regenerate.py``):
``tests/unit/test_replay.py`` replays each ``*.json`` file against this code and expects
every command to match exactly.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from cairn import ActivityError, ApplicationError, RetryPolicy, activity, workflow

TIMEOUT = timedelta(seconds=10)
# Three quick attempts: the retried-then-failed golden history takes a fraction of a second.
THREE_TRIES = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3, jitter=0.0)


@activity.defn
async def double(x: int) -> int:
    return x * 2


@activity.defn
async def greet(name: str) -> str:
    return f"hello {name}"


@activity.defn
async def always_fails(x: int) -> int:
    raise ApplicationError(f"boom {x}", type="Boom", details={"x": x})


@workflow.defn
async def golden_pipeline(x: int) -> dict[str, Any]:
    """Two activities in parallel, a durable timer, then an activity under asyncio.timeout."""
    doubled, greeting = await asyncio.gather(
        workflow.execute_activity(double, x, start_to_close_timeout=TIMEOUT),
        workflow.execute_activity(greet, "cairn", start_to_close_timeout=TIMEOUT),
    )
    await workflow.sleep(0.2)
    async with asyncio.timeout(60):
        again = await workflow.execute_activity(double, doubled, start_to_close_timeout=TIMEOUT)
    return {"doubled": doubled, "greeting": greeting, "again": again, "token": str(workflow.uuid4())}


@workflow.defn
async def golden_retry(x: int) -> dict[str, Any]:
    """An activity that fails on every attempt; the workflow catches the final ActivityError."""
    try:
        await workflow.execute_activity(always_fails, x, start_to_close_timeout=TIMEOUT,
                                        retry_policy=THREE_TRIES)
    except ActivityError as err:
        return {"caught": err.cause.type, "message": err.cause.message, "attempts": err.attempts,
                "retry_state": err.retry_state}
    return {"caught": None}


@activity.defn
async def reserve(item: str) -> str:
    return f"{item} booked"


@activity.defn
async def sold_out(item: str) -> str:
    raise ApplicationError(f"no {item} left", type="SoldOut", non_retryable=True)


@activity.defn
async def cancel(booking: str) -> str:
    return f"{booking}: cancelled"


@workflow.defn
async def golden_saga(trip: str) -> dict[str, Any]:
    """A saga whose third step fails: its compensations (one registered before its step)
    run newest first, then the step's ActivityError fails the run."""
    async with workflow.saga() as saga:
        car = await workflow.execute_activity(reserve, f"{trip} car", start_to_close_timeout=TIMEOUT)
        saga.compensate(cancel, car, start_to_close_timeout=TIMEOUT)
        hotel = await workflow.execute_activity(reserve, f"{trip} hotel", start_to_close_timeout=TIMEOUT)
        saga.compensate(cancel, hotel, start_to_close_timeout=TIMEOUT)
        saga.compensate(cancel, f"{trip} flight", start_to_close_timeout=TIMEOUT)  # may half-succeed
        flight = await workflow.execute_activity(sold_out, f"{trip} flight", start_to_close_timeout=TIMEOUT)
    return {"car": car, "hotel": hotel, "flight": flight}


@workflow.defn
async def golden_signals(name: str) -> dict[str, Any]:
    """Signal-driven: a sync handler sums "add" signals, an async handler runs an activity
    per "greet" signal, wait_signal takes "finish" (under a timeout that does not fire), then
    a wait condition waits for the async handlers' activities."""
    state: dict[str, Any] = {"total": 0, "greetings": []}

    async def on_greet(who: str) -> None:
        state["greetings"].append(await workflow.execute_activity(greet, who, start_to_close_timeout=TIMEOUT))

    workflow.set_signal_handler("add", lambda n: state.__setitem__("total", state["total"] + n))
    workflow.set_signal_handler("greet", on_greet)
    workflow.set_query_handler("total", lambda: state["total"])
    expected = await workflow.wait_signal("finish", timeout=600)
    await workflow.wait_condition(lambda: len(state["greetings"]) >= expected)
    return {"name": name, **state}


@workflow.defn
async def golden_patched(x: int) -> dict[str, Any]:
    """A change deployed while runs were in flight: a greeting between the two doublings,
    guarded by workflow.patched. ``patched.json`` was recorded by the code before the change
    (``unpatched_workflows.py``) and replays through the old branch; ``patched_new_run.json``
    was recorded by this code and has the patch marker."""
    doubled = await workflow.execute_activity(double, x, start_to_close_timeout=TIMEOUT)
    greeting = None
    if workflow.patched("greet-between"):
        greeting = await workflow.execute_activity(greet, f"patched {doubled}", start_to_close_timeout=TIMEOUT)
    again = await workflow.execute_activity(double, doubled, start_to_close_timeout=TIMEOUT)
    return {"doubled": doubled, "greeting": greeting, "again": again}
