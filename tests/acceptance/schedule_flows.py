"""The workflow the schedule crash test's worker processes run (``cairn worker -m schedule_flows``)."""

from __future__ import annotations

from cairn import workflow


@workflow.defn
async def scheduled_tick(label: str) -> str:
    await workflow.sleep(0.2)  # a task boundary: the run is open across a worker's death
    return f"tick {label}"
