"""The code before the change that ``golden_workflows.golden_patched`` guards with
``workflow.patched``: ``patched.json`` was recorded from it (see ``regenerate.py``)."""

from __future__ import annotations

from typing import Any

from golden_workflows import TIMEOUT, double

from cairn import workflow


@workflow.defn(name="golden_patched")
async def golden_patched_before(x: int) -> dict[str, Any]:
    doubled = await workflow.execute_activity(double, x, start_to_close_timeout=TIMEOUT)
    again = await workflow.execute_activity(double, doubled, start_to_close_timeout=TIMEOUT)
    return {"doubled": doubled, "again": again}
