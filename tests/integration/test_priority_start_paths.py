"""Priority, fairness and concurrency keys on every way a run starts besides ``client.start``
(tests/integration/test_priority_fairness.py): signal-with-start, update-with-start (both
forms, and the sync client), schedules (API and CLI), continue-as-new, reset, retry and
their batch forms. Each asserts from the database: the run's priority and keys, its first
task's priority and fairness key, and that a limit of 1 holds a run started that way."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from cairn import Priority, workflow
from cairn.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    WithStartWorkflowOperation,
    WorkflowUpdateStage,
)
from cairn.errors import InputValidationError
from cairn.sync import SyncClient
from support import bad_input, cairn_in_thread, ok, wait_until

ADMITTED = WorkflowUpdateStage.ADMITTED  # written: no worker needed to answer


@workflow.defn
async def parked(tag: str) -> str:
    """Stays open (its first workflow task runs, then it waits for nothing)."""
    await workflow.wait_condition(lambda: False)
    return tag


@workflow.defn
async def again(n: int) -> int:
    if n > 0:
        workflow.continue_as_new(n - 1)
    return n


def placed(sql: Any, workflow_id: str) -> list[tuple[Any, ...]]:
    """Each run of the id, oldest first: the run's priority, fairness key and weight and
    concurrency key, its task's priority and fairness key, and whether the task is held."""
    return sql("""SELECT r.priority, r.fairness_key, r.fairness_weight, r.concurrency_key,
                         t.priority, t.fairness_key, t.available_at = 'infinity'
                  FROM cairn.runs r LEFT JOIN cairn.workflow_tasks t ON t.run_id = r.run_id
                  WHERE r.workflow_id = %s ORDER BY r.run_id""", (workflow_id,))


def slots(sql: Any, key: str) -> tuple[int, int]:
    """(slots in use, runs waiting) of a workflow key."""
    [(in_use,)] = sql("SELECT in_use FROM cairn.concurrency_limits WHERE kind = 'workflow' AND key = %s", (key,))
    [(waiting,)] = sql("SELECT count(*) FROM cairn.concurrency_waiting WHERE key = %s", (key,))
    return in_use, waiting


async def test_signal_and_update_with_start_take_priority_and_key(client: Any, sql: Any) -> None:
    await client.limits.set("k", 1, kind="workflow")
    await client.signal_with_start(parked, "a", id="sws-1", signal="go",
                                   priority=Priority(priority_key=2, fairness_key="t1", fairness_weight=2.0),
                                   concurrency_key="k")
    await client.signal_with_start(parked, "b", id="sws-2", signal="go", priority=4, concurrency_key="k")
    await client.start_update_with_start(parked, "c", id="uws-3", update="poke", wait_for_stage=ADMITTED,
                                         priority=1, concurrency_key="k")
    op = WithStartWorkflowOperation(parked, "d", id="uws-4", priority=Priority(fairness_key="t4"),
                                    concurrency_key="k")
    await client.start_update_with_start_workflow("poke", start_workflow_operation=op, wait_for_stage=ADMITTED)
    assert (await op.workflow_handle()).workflow_id == "uws-4"
    assert placed(sql, "sws-1") == [(2, "t1", 2.0, "k", 2, "t1", False)]  # took the one slot
    assert placed(sql, "sws-2") == [(4, None, None, "k", 4, None, True)]  # held: created, not started
    assert placed(sql, "uws-3") == [(1, None, None, "k", 1, None, True)]
    assert placed(sql, "uws-4") == [(None, "t4", None, "k", 3, "t4", True)]
    assert slots(sql, "k") == (1, 3)
    # A with-start call that finds the run open signals it: the run keeps its own place.
    await client.signal_with_start(parked, "a", id="sws-1", signal="go", priority=5, concurrency_key="other")
    assert placed(sql, "sws-1") == [(2, "t1", 2.0, "k", 2, "t1", False)]
    assert sql("SELECT count(*) FROM cairn.inbox i JOIN cairn.runs r USING (run_id) "
               "WHERE r.workflow_id = 'sws-1'") == [(2,)]


@pytest.mark.parametrize("kwargs", [{"priority": 0}, {"priority": Priority(fairness_key="t"), "concurrency_key": ""},
                                    {"concurrency_key": "a\nb"}])
async def test_bad_with_start_input_writes_nothing(client: Any, sql: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputValidationError):
        await client.signal_with_start(parked, "a", id="bad-1", signal="go", **kwargs)
    with pytest.raises(InputValidationError):
        await client.execute_update_with_start(parked, "a", id="bad-2", update="poke", **kwargs)
    with pytest.raises(InputValidationError):
        WithStartWorkflowOperation(parked, "a", id="bad-3", **kwargs)
    assert sql("SELECT (SELECT count(*) FROM cairn.runs) + (SELECT count(*) FROM cairn.inbox) "
               "+ (SELECT count(*) FROM cairn.updates)") == [(0,)]


async def test_sync_client_with_start_takes_priority_and_key(db_url: str, sql: Any) -> None:
    def script() -> None:
        with SyncClient(db_url) as client:
            client.signal_with_start(parked, "s", id="sync-sws", signal="go", priority=Priority(priority_key=2),
                                     concurrency_key="sk")

    await asyncio.to_thread(script)
    assert placed(sql, "sync-sws") == [(2, None, None, "sk", 2, None, False)]


def _schedule(**action: Any) -> Schedule:
    return Schedule(action=ScheduleActionStartWorkflow(parked, "s", **action),
                    spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=1))]),
                    policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.ALLOW_ALL))


async def test_schedule_runs_take_the_action_priority_and_key(client: Any, sql: Any) -> None:
    await client.limits.set("sk", 1, kind="workflow")
    handle = await client.create_schedule(
        "prio", _schedule(priority=Priority(priority_key=2, fairness_key="acme"), concurrency_key="sk"),
        trigger_immediately=True)
    await handle.trigger()
    rows = sql("""SELECT r.priority, r.fairness_key, r.concurrency_key, t.priority, t.fairness_key,
                         t.available_at = 'infinity'
                  FROM cairn.schedule_actions a JOIN cairn.runs r ON r.run_id = a.run_id
                  JOIN cairn.workflow_tasks t ON t.run_id = r.run_id WHERE a.schedule_id = 'prio' ORDER BY a.slot""")
    assert rows == [(2, "acme", "sk", 2, "acme", False), (2, "acme", "sk", 2, "acme", True)]
    assert slots(sql, "sk") == (1, 1)
    described = await handle.describe()
    assert described.schedule.action.priority == Priority(priority_key=2, fairness_key="acme")
    assert described.schedule.action.concurrency_key == "sk"
    shown = described.to_json()["action"]
    assert (shown["priority"], shown["concurrency_key"]) == ({"priority_key": 2, "fairness_key": "acme"}, "sk")
    [(stored,)] = sql("SELECT action FROM cairn.schedules WHERE schedule_id = 'prio'")
    assert (stored["priority"], stored["concurrency_key"]) == ({"priority_key": 2, "fairness_key": "acme"}, "sk")
    # Without them the stored action is as before, and the runs start as before.
    plain = await client.create_schedule("plain", _schedule(), trigger_immediately=True)
    assert "priority" not in sql("SELECT action FROM cairn.schedules WHERE schedule_id = 'plain'")[0][0]
    assert (await plain.describe()).to_json()["action"]["priority"] is None
    assert sql("""SELECT r.priority, r.concurrency_key, t.priority FROM cairn.schedule_actions a
                  JOIN cairn.runs r ON r.run_id = a.run_id JOIN cairn.workflow_tasks t ON t.run_id = r.run_id
                  WHERE a.schedule_id = 'plain'""") == [(None, None, 3)]


async def test_bad_schedule_priority_or_key_writes_nothing(client: Any, sql: Any) -> None:
    with pytest.raises(InputValidationError, match="priority_key"):
        _schedule(priority=9)
    with pytest.raises(InputValidationError, match="concurrency_key"):
        await client.create_schedule("bad", _schedule(concurrency_key=" "), trigger_immediately=True)
    assert sql("SELECT (SELECT count(*) FROM cairn.schedules) + (SELECT count(*) FROM cairn.runs)") == [(0,)]


async def test_schedule_cli_takes_priority_and_key(db_url: str, sql: Any) -> None:
    made = json.loads(ok(await cairn_in_thread(
        db_url, "schedule", "create", "cli-prio", "parked", "--input", '"c"', "--every", "1d", "--priority", "1",
        "--fairness-key", "acme", "--fairness-weight", "2", "--concurrency-key", "ck", "--json")))
    assert made["action"]["priority"] == {"priority_key": 1, "fairness_key": "acme", "fairness_weight": 2.0}
    assert made["action"]["concurrency_key"] == "ck"
    text = ok(await cairn_in_thread(db_url, "schedule", "describe", "cli-prio"))
    assert "runs' priority: 1, fairness key acme (weight 2); concurrency key ck" in text
    ok(await cairn_in_thread(db_url, "schedule", "trigger", "cli-prio"))
    assert placed(sql, sql("SELECT workflow_id FROM cairn.runs")[0][0]) == [
        (1, "acme", 2.0, "ck", 1, "acme", False)]
    bad_input(await cairn_in_thread(db_url, "schedule", "create", "cli-bad", "parked", "--every", "1d",
                                    "--priority", "6"), "priority_key")
    bad_input(await cairn_in_thread(db_url, "schedule", "create", "cli-bad", "parked", "--every", "1d",
                                    "--fairness-weight", "0"), "fairness_weight")
    assert sql("SELECT count(*) FROM cairn.schedules WHERE schedule_id = 'cli-bad'") == [(0,)]


async def test_continue_as_new_keeps_priority_and_key(client: Any, start_worker: Any, sql: Any) -> None:
    handle = await client.start(again, 2, id="can", priority=Priority(priority_key=4, fairness_key="f",
                                                                      fairness_weight=0.5), concurrency_key="ck")
    await start_worker(workflows=[again])
    assert await handle.result() == 0
    assert sql("""SELECT priority, fairness_key, fairness_weight, concurrency_key, status FROM cairn.runs
                  WHERE workflow_id = 'can' ORDER BY run_id""") == [
        (4, "f", 0.5, "ck", "continued_as_new"), (4, "f", 0.5, "ck", "continued_as_new"),
        (4, "f", 0.5, "ck", "completed")]
    assert sql("SELECT in_use FROM cairn.concurrency_limits WHERE key = 'ck'") == [(0,)]


async def test_reset_keeps_priority_and_key(client: Any, start_worker: Any, sql: Any) -> None:
    await client.limits.set("rk", 1, kind="workflow")
    first = await client.start(parked, "a", id="ra", priority=Priority(priority_key=2, fairness_key="t",
                                                                       fairness_weight=3.0), concurrency_key="rk")
    await start_worker(workflows=[parked])
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.history WHERE run_id = %s "
                                 "AND type = 'WorkflowTaskStarted'", (first.run_id,)) == [(1,)])
    other = await client.start(parked, "b", id="rb", concurrency_key="rk")  # waits for ra's slot
    reset = await first.reset(to_last_task=True)
    # ra's termination gave its slot to the oldest waiting run (rb); the reset run waits.
    old, new = placed(sql, "ra")
    assert old == (2, "t", 3.0, "rk", None, None, None)  # closed: no task
    assert new == (2, "t", 3.0, "rk", 2, "t", True)
    assert slots(sql, "rk") == (1, 1)
    assert sql("SELECT run_id::text FROM cairn.concurrency_waiting") == [(reset.run_id,)]
    await other.terminate("make room")  # its slot goes to the reset run, which runs its task
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.history WHERE run_id = %s "
                                 "AND type = 'WorkflowTaskStarted'", (reset.run_id,)) == [(1,)])
    assert slots(sql, "rk") == (1, 0)
    await reset.terminate("done")
    assert slots(sql, "rk") == (0, 0)


async def test_retry_keeps_priority_and_key(client: Any, sql: Any) -> None:
    gone = await client.start(parked, "r", id="rt", priority=Priority(priority_key=5, fairness_key="x"),
                              concurrency_key="tk")
    await gone.terminate("stop")
    await client.limits.set("tk", 1, kind="workflow")
    await client.start(parked, "h", id="holder", concurrency_key="tk")  # takes the one slot
    retried = await client.retry("rt")
    assert placed(sql, "rt")[1] == (5, "x", None, "tk", 5, "x", True)
    assert sql("SELECT run_id::text FROM cairn.concurrency_waiting") == [(retried.run_id,)]
    # A batch retry (its executor calls the same retry) keeps them too.
    await retried.terminate("again")
    batch = await (await client.start_batch("retry", where="WorkflowId = 'rt' AND Status = 'terminated'")).wait()
    assert batch.done == 1, batch
    assert placed(sql, "rt")[-1] == (5, "x", None, "tk", 5, "x", True)
    assert slots(sql, "tk") == (1, 1)


async def test_batch_reset_keeps_priority_and_key(client: Any, start_worker: Any, sql: Any) -> None:
    await client.limits.set("bk", 1, kind="workflow")
    handle = await client.start(parked, "a", id="br", priority=3, concurrency_key="bk")
    await start_worker(workflows=[parked])
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.history WHERE run_id = %s "
                                 "AND type = 'WorkflowTaskStarted'", (handle.run_id,)) == [(1,)])
    batch = await (await client.start_batch("reset", where="WorkflowId = 'br'", reset_to="last")).wait()
    assert batch.done == 1, batch
    assert placed(sql, "br")[-1][:4] == (3, None, None, "bk")
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                                 "WHERE r.workflow_id = 'br' AND r.status = 'running' "
                                 "AND h.type = 'WorkflowTaskStarted'") == [(1,)])
    assert slots(sql, "bk") == (1, 0)
