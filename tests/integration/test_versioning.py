"""workflow.patched across a deployment: a run that passed the patch point under the old
code is continued by a worker with the new code and keeps the old branch; a new run, and an
old run that reaches the patch point only under the new code, take the new branch."""

from __future__ import annotations

import asyncio
from typing import Any

from cairn import activity, workflow
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.workflow import WorkflowInfo, definition_of
from support import events, running_worker, wait_until

_gates: dict[str, asyncio.Event] = {}


@activity.defn
async def step(tag: str, name: str) -> str:
    if name.endswith("two"):
        await asyncio.wait_for(_gates.setdefault(tag, asyncio.Event()).wait(), 30)
    return name


@workflow.defn(name="upgrade")
async def upgrade_v1(tag: str) -> list[Any]:
    one = await workflow.execute_activity(step, tag, "one", start_to_close_timeout=10)
    if tag == "late":
        await workflow.sleep(3600)  # reaches the patch point only after the deployment
    two = await workflow.execute_activity(step, tag, "old-two", start_to_close_timeout=60)
    return [one, two]


@workflow.defn(name="upgrade")
async def upgrade_v2(tag: str) -> list[Any]:
    one = await workflow.execute_activity(step, tag, "one", start_to_close_timeout=10)
    if tag == "late":
        await workflow.sleep(3600)
    if workflow.patched("two-v2"):
        two = await workflow.execute_activity(step, tag, "new-two", start_to_close_timeout=60)
    else:
        two = await workflow.execute_activity(step, tag, "old-two", start_to_close_timeout=60)
    return [one, two, workflow.patched("two-v2")]


async def test_an_old_run_keeps_the_old_branch_under_new_code_and_a_new_run_takes_the_new_one(
        client, start_worker, sql, db_url):
    await start_worker(activities=[step])  # activities only, for the whole test
    async with running_worker(db_url, workflows=[upgrade_v1]):
        old = await client.start(upgrade_v1, "old", id="upgrade-old")
        late = await client.start(upgrade_v1, "late", id="upgrade-late")
        await wait_until(lambda: [d["input"][1] for _, t, d in events(sql, old.run_id)
                                  if t == "ActivityScheduled"] == ["one", "old-two"],
                         what="the old run to pass the patch point under the old code")
        await wait_until(lambda: "TimerStarted" in [t for _, t, _ in events(sql, late.run_id)],
                         what="the late run to wait before the patch point")
    # The old code's worker is gone; the new code's worker takes over (a cache miss: it
    # replays each old run's history, then carries on live).
    async with running_worker(db_url, workflows=[upgrade_v2]) as worker:
        new = await client.start(upgrade_v2, "new", id="upgrade-new")
        for tag in ("old", "new", "late"):
            _gates.setdefault(tag, asyncio.Event()).set()
        # The late run's timer: fire it now rather than in an hour.
        sql("UPDATE cairn.timers SET fire_at = now() WHERE run_id = %s", (late.run_id,))
        assert await old.result(timeout=20) == ["one", "old-two", False]
        assert await new.result(timeout=20) == ["one", "new-two", True]
        # Temporal's rule: the decision was not recorded yet, so the new code decides.
        assert await late.result(timeout=20) == ["one", "new-two", True]
        assert worker.stats.workflow_task_failures == 0
        assert worker.stats.cache_misses >= 2

    old_history = events(sql, old.run_id)
    assert not [d for _, t, d in old_history if t == "MarkerRecorded"]
    assert [d["input"][1] for _, t, d in old_history if t == "ActivityScheduled"] == ["one", "old-two"]

    new_history = events(sql, new.run_id)
    types = [t for _, t, _ in new_history]
    marker = types.index("MarkerRecorded")
    assert new_history[marker][2] == {"kind": "patch", "patch_id": "two-v2", "deprecated": False}
    assert types[marker + 1] == "ActivityScheduled"
    assert new_history[marker + 1][2]["input"] == ["new", "new-two"]
    assert types.count("MarkerRecorded") == 1  # the second patched() call was memoized

    late_history = events(sql, late.run_id)
    assert [d for _, t, d in late_history if t == "MarkerRecorded"] == [
        {"kind": "patch", "patch_id": "two-v2", "deprecated": False}]

    # Every history replays against the new code.
    for handle in (old, new, late):
        recorded = [Event(s, t, d) for s, t, d in events(sql, handle.run_id)]
        info = WorkflowInfo(handle.workflow_id, handle.run_id, "upgrade", "default", "default",
                            sql("SELECT created_at FROM cairn.runs WHERE run_id = %s", (handle.run_id,))[0][0])
        assert replay(definition_of(upgrade_v2), info, recorded).closed
