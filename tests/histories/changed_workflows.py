"""Changed versions of the golden workflows that no longer match their recorded histories.

``cairn replay <history> -m changed_workflows`` must report the divergence (see
``tests/unit/test_replay.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from golden_workflows import THREE_TRIES, TIMEOUT, always_fails, cancel, double, greet, reserve, sold_out

from cairn import workflow


@workflow.defn(name="golden_pipeline")
async def golden_pipeline_swapped(x: int) -> dict[str, Any]:
    """The two parallel activities in the other order: seq 3 is now ``greet``."""
    greeting, doubled = await asyncio.gather(
        workflow.execute_activity(greet, "cairn", start_to_close_timeout=TIMEOUT),
        workflow.execute_activity(double, x, start_to_close_timeout=TIMEOUT),
    )
    await workflow.sleep(0.2)
    return {"doubled": doubled, "greeting": greeting}


@workflow.defn(name="golden_retry")
async def golden_retry_uncaught(x: int) -> int:
    """No longer catches the activity's failure: fails where history has completed."""
    return int(await workflow.execute_activity(always_fails, x, start_to_close_timeout=TIMEOUT,
                                               retry_policy=THREE_TRIES))


@workflow.defn(name="golden_saga")
async def golden_saga_parallel(trip: str) -> dict[str, Any]:
    """Compensates in parallel: schedules all three cancellations in one workflow task."""
    async with workflow.saga(parallel_compensation=True) as saga:
        car = await workflow.execute_activity(reserve, f"{trip} car", start_to_close_timeout=TIMEOUT)
        saga.compensate(cancel, car, start_to_close_timeout=TIMEOUT)
        hotel = await workflow.execute_activity(reserve, f"{trip} hotel", start_to_close_timeout=TIMEOUT)
        saga.compensate(cancel, hotel, start_to_close_timeout=TIMEOUT)
        saga.compensate(cancel, f"{trip} flight", start_to_close_timeout=TIMEOUT)
        flight = await workflow.execute_activity(sold_out, f"{trip} flight", start_to_close_timeout=TIMEOUT)
    return {"car": car, "hotel": hotel, "flight": flight}


@workflow.defn(name="golden_signals")
async def golden_signals_no_timeout(name: str) -> dict[str, Any]:
    """Waits for "finish" without the timeout: the recorded TimerStarted is not produced."""
    state: dict[str, Any] = {"total": 0, "greetings": []}

    async def on_greet(who: str) -> None:
        state["greetings"].append(await workflow.execute_activity(greet, who, start_to_close_timeout=TIMEOUT))

    workflow.set_signal_handler("add", lambda n: state.__setitem__("total", state["total"] + n))
    workflow.set_signal_handler("greet", on_greet)
    expected = await workflow.wait_signal("finish")
    await workflow.wait_condition(lambda: len(state["greetings"]) >= expected)
    return {"name": name, **state}


@workflow.defn(name="golden_patched")
async def golden_patched_unguarded(x: int) -> dict[str, Any]:
    """The same change made without workflow.patched: ``patched.json`` (recorded before the
    change) diverges at the greeting."""
    doubled = await workflow.execute_activity(double, x, start_to_close_timeout=TIMEOUT)
    greeting = await workflow.execute_activity(greet, f"patched {doubled}", start_to_close_timeout=TIMEOUT)
    again = await workflow.execute_activity(double, doubled, start_to_close_timeout=TIMEOUT)
    return {"doubled": doubled, "greeting": greeting, "again": again}
