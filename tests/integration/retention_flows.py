"""Workflows for the retention tests (a module of its own, so that `cairn replay -m` and a
worker subprocess import it): a parent with a child, an activity, a timer and an update; a
run that waits for a signal (it stays open)."""

from __future__ import annotations

from cairn import activity, workflow


@activity.defn
async def double(n: int) -> int:
    return 2 * n


@workflow.defn
async def kept_child(n: int) -> int:
    return await workflow.execute_activity(double, n, start_to_close_timeout=10)


@workflow.defn
async def kept_parent(n: int) -> int:
    """A child, a timer, then waits for an update "finish" (a row in cairn.updates)."""
    state = {"done": False}

    def finish() -> str:
        state["done"] = True
        return "finishing"

    workflow.set_update_handler("finish", finish)
    got = await workflow.execute_child_workflow(kept_child, n, id=f"{workflow.info().workflow_id}-child")
    await workflow.sleep(0.01)
    await workflow.wait_condition(lambda: state["done"])
    return got + 1


@workflow.defn
async def waits_for_go() -> str:
    return str(await workflow.wait_signal("go"))
