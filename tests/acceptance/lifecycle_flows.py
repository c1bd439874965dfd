"""Workflows for the run-lifecycle CLI tests (loaded next to flows.py by the worker)."""

from __future__ import annotations

from cairn import workflow


@workflow.defn
async def nest(seconds: float) -> str:
    handle = await workflow.start_child_workflow("sleeper", seconds, id="nested-child", parent_close_policy="abandon")
    return await handle  # type: ignore[no-any-return]


@workflow.defn
async def relay(n: int) -> int:
    if n > 0:
        workflow.continue_as_new(n - 1)
    return n
