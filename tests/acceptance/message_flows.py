"""Workflows for the messages acceptance test (served next to ``flows`` by a subprocess worker)."""

from __future__ import annotations

from typing import Any

from cairn import workflow


@workflow.defn
async def tally(goal: int) -> dict[str, Any]:
    """Sums "add" signals (a handler) until the goal; "status" answers the running total."""
    state: dict[str, Any] = {"total": 0, "seen": 0}

    def add(n: int) -> None:
        state["total"] += n
        state["seen"] += 1

    workflow.set_signal_handler("add", add)
    workflow.set_query_handler("status", lambda: state)
    await workflow.wait_condition(lambda: state["total"] >= goal)
    return state
