"""Broken workflow code in production: a changed definition (non-determinism) or a plain bug
fails the workflow *task*, which is retried with backoff, and leaves history alone."""

from __future__ import annotations

from datetime import datetime

from cairn import activity, workflow
from support import events, run_status, running_worker, types_of, wait_until


@activity.defn
async def reserve(item: str) -> str:
    return f"reserved {item}"


@activity.defn
async def charge(item: str) -> str:
    return f"charged {item}"


@activity.defn
async def audit(item: str) -> str:
    return f"audited {item}"


@workflow.defn(name="purchase")
async def purchase_v1(item: str) -> list[str]:
    first = await workflow.execute_activity(reserve, item, start_to_close_timeout=10)
    await workflow.sleep(1.0)
    second = await workflow.execute_activity(charge, item, start_to_close_timeout=10)
    return [first, second]


@workflow.defn(name="purchase")
async def purchase_v2(item: str) -> list[str]:
    # Deployed while v1 runs were open: a different activity at the same point.
    first = await workflow.execute_activity(audit, item, start_to_close_timeout=10)
    await workflow.sleep(1.0)
    second = await workflow.execute_activity(charge, item, start_to_close_timeout=10)
    return [first, second]


async def test_changed_definition_fails_the_task_until_fixed_code_runs(client, db_url, sql):
    activities = [reserve, charge, audit]
    # Worker A runs v1 up to the timer, then goes away.
    async with running_worker(db_url, workflows=[purchase_v1], activities=activities):
        handle = await client.start(purchase_v1, "book", id="purchase-1")
        await wait_until(lambda: "TimerStarted" in types_of(sql, handle.run_id), what="the timer")
    frozen = events(sql, handle.run_id)
    assert [t for _, t, _ in frozen][-1] == "TimerStarted"

    # Worker B runs v2: once the timer fires, replay diverges at the first activity.
    async with running_worker(db_url, workflows=[purchase_v2], activities=activities) as b:
        async def failed_task():
            task = (await handle.describe()).workflow_task
            return task if task and task["failures"] >= 1 else None

        task = await wait_until(failed_task, timeout=15, what="a failed workflow task")
        assert b.stats.workflow_task_failures >= 1
    assert task["last_error"]["type"] == "NonDeterminismError"
    scheduled_seq = next(s for s, t, _ in frozen if t == "ActivityScheduled")
    assert task["last_error"]["details"]["seq"] == scheduled_seq
    assert "reserve" in task["last_error"]["details"]["expected"]
    assert "audit" in task["last_error"]["details"]["produced"]
    # Retried with backoff: the task is parked in the future, not hot-looping.
    assert task["available_at"] > datetime.now(task["available_at"].tzinfo)
    # History did not move: same events, same last seq; the run is still open.
    assert events(sql, handle.run_id) == frozen
    assert run_status(sql, handle.run_id) == "running"
    desc = await handle.describe()
    assert desc.status == "running"
    assert desc.history_length == frozen[-1][0]
    # The fired timer waits in the inbox, not in history.
    assert sql("SELECT type FROM cairn.inbox WHERE run_id = %s", (handle.run_id,)) == [("TimerFired",)]

    # Worker C runs the original code again: the run picks up where it stopped.
    async with running_worker(db_url, workflows=[purchase_v1], activities=activities):
        assert await handle.result(timeout=20) == ["reserved book", "charged book"]
    after = events(sql, handle.run_id)
    assert after[:len(frozen)] == frozen
    assert [t for _, t, _ in after[len(frozen):]] == [
        "WorkflowTaskStarted", "TimerFired", "ActivityScheduled", "WorkflowTaskStarted",
        "ActivityCompleted", "WorkflowCompleted"]
    assert run_status(sql, handle.run_id) == "completed"
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(0,)]


@workflow.defn
async def buggy(n: int) -> int:
    return n + "1"  # type: ignore[operator]  # TypeError: a bug, not a workflow failure


async def test_bug_fails_the_task_not_the_run(client, start_worker, sql):
    worker = await start_worker(workflows=[buggy])
    handle = await client.start(buggy, 1, id="buggy-1")

    async def failed_twice():
        task = (await handle.describe()).workflow_task
        return task if task and task["failures"] >= 2 else None

    task = await wait_until(failed_twice, timeout=15, what="two failed workflow task attempts")
    assert task["last_error"]["type"] == "TypeError"
    assert "str" in task["last_error"]["message"]
    assert worker.stats.workflow_task_failures >= 2
    assert run_status(sql, handle.run_id) == "running"
    assert types_of(sql, handle.run_id) == ["WorkflowStarted"]
    assert sql("SELECT failure FROM cairn.runs WHERE run_id = %s", (handle.run_id,)) == [(None,)]

    # An operator can still end it.
    await handle.terminate("bug")
    assert run_status(sql, handle.run_id) == "terminated"
    assert types_of(sql, handle.run_id) == ["WorkflowStarted", "WorkflowTerminated"]
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(0,)]
