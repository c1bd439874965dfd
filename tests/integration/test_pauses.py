"""Pause and resume (issue 18, item 5), in-process: a paused run's workflow tasks and
activities are not claimed while it is paused (a control run on the same worker completes
meanwhile: the worker was claiming), and complete after the resume; its inbox collects
outcomes, signals and timers; queries are answered; an activity type and a queue paused
namespace-wide; RetryPolicy(on_exhausted="pause") then unpause or fail; pausing a closed
run writes nothing; ``cairn verify`` is clean after each."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from cairn import ActivityError, RetryPolicy, activity, workflow
from cairn.errors import InputValidationError, WorkflowClosed
from cairn.verify import verify
from support import outcomes_per_activity, wait_until

_gates: dict[str, asyncio.Event] = {}
_healthy: set[str] = set()


@activity.defn
async def step(tag: str) -> str:
    return f"done {tag}"


@activity.defn
async def gated(tag: str) -> str:
    await _gates.setdefault(tag, asyncio.Event()).wait()
    return f"opened {tag}"


@activity.defn
async def flaky(tag: str) -> str:
    if tag not in _healthy:
        raise ConnectionError(f"{tag}: the service is down")
    return f"healthy {tag} on attempt {activity.info().attempt}"


@workflow.defn
async def one_step(tag: str) -> str:
    return await workflow.execute_activity(step, tag, start_to_close_timeout=10)


@workflow.defn
async def gated_then_signal(tag: str) -> list[str]:
    got: list[str] = []
    workflow.set_signal_handler("note", got.append)
    workflow.set_query_handler("got", lambda: list(got))
    first = await workflow.execute_activity(gated, tag, start_to_close_timeout=30)
    got.append(first)
    await workflow.wait_condition(lambda: len(got) >= 2)
    await workflow.sleep(0.2)
    got.append(await workflow.execute_activity(step, tag, start_to_close_timeout=10))
    return got


@workflow.defn
async def sleeper(seconds: float) -> str:
    await workflow.sleep(seconds)
    return "woke"


@workflow.defn
async def on_queue(tag: str, queue: str) -> str:
    return await workflow.execute_activity(step, tag, start_to_close_timeout=10, queue=queue)


@workflow.defn
async def pausing_policy(tag: str) -> str:
    try:
        return await workflow.execute_activity(
            flaky, tag, start_to_close_timeout=10,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.05), maximum_attempts=2, jitter=0,
                                     on_exhausted="pause"))
    except ActivityError as exc:
        return f"failed: {exc.cause}"


WORKFLOWS = [one_step, gated_then_signal, sleeper, on_queue, pausing_policy]
ACTIVITIES = [step, gated, flaky]


async def _control(client: Any, tag: str) -> None:
    """A run of its own, completed: proof that the worker claimed meanwhile."""
    assert await client.execute(one_step, tag, id=f"control-{tag}") == f"done {tag}"


async def _clean(db_url: str) -> None:
    report = await verify(db_url, workflows=WORKFLOWS)
    assert report.ok(), report


async def test_paused_new_run_is_not_claimed_until_resumed(client, start_worker, sql, db_url):
    handle = await client.start(one_step, "new", id="paused-new")
    await handle.pause("hold it")
    assert sql("SELECT pause ->> 'note' FROM cairn.workflow_tasks WHERE run_id = %s", (handle.run_id,)) == \
        [("hold it",)]
    await start_worker(workflows=WORKFLOWS, activities=ACTIVITIES)
    await _control(client, "new")
    assert sql("SELECT max(seq) FROM cairn.history WHERE run_id = %s", (handle.run_id,)) == [(1,)]
    d = await handle.describe()
    assert d.status == "running"
    assert d.paused is not None
    assert d.paused["note"] == "hold it"
    assert "placeholder" not in d.paused
    await handle.pause("again")  # a paused run keeps its first pause
    assert (await handle.describe()).paused["note"] == "hold it"  # type: ignore[index]
    assert [p.kind for p in await client.list_pauses()] == ["run"]
    with pytest.raises(InputValidationError):
        await handle.pause_activity(7)  # no such pending activity: nothing written

    assert await handle.unpause() is True
    assert await handle.result(timeout=30) == "done new"
    with pytest.raises(WorkflowClosed):  # closed now
        await handle.unpause()
    await _clean(db_url)


async def test_paused_run_collects_outcome_signal_and_timer_then_completes_once(client, start_worker, sql, db_url):
    tag = "mid"
    _gates[tag] = asyncio.Event()
    await start_worker(workflows=WORKFLOWS, activities=ACTIVITIES)
    handle = await client.start(gated_then_signal, tag, id="paused-mid")
    await wait_until(lambda: sql("SELECT lease_owner IS NOT NULL FROM cairn.activity_tasks WHERE run_id = %s",
                                 (handle.run_id,)) == [(True,)])
    await handle.pause("fixing the downstream")
    # The running attempt finishes; its outcome is recorded and waits (the fast path runs nothing).
    _gates[tag].set()
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.inbox WHERE run_id = %s AND type = 'ActivityCompleted'",
                                 (handle.run_id,)) == [(1,)])
    await handle.signal("note", "a signal")
    await _control(client, tag)
    assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s AND type IN "
               "('ActivityCompleted', 'SignalReceived')", (handle.run_id,)) == [(0,)]
    # Queries are answered from the current state (the outcome and the signal wait).
    assert await handle.query("got", timeout=10) == []
    d = await handle.describe()
    assert d.paused is not None
    assert d.paused["note"] == "fixing the downstream"

    assert await handle.unpause() is True
    assert await handle.result(timeout=30) == [f"opened {tag}", "a signal", f"done {tag}"]
    assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}
    await _clean(db_url)


async def test_run_paused_while_waiting_gets_a_placeholder_task(client, start_worker, sql, db_url):
    tag = "idle"
    _gates[tag] = asyncio.Event()
    _gates[tag].set()
    await start_worker(workflows=WORKFLOWS, activities=ACTIVITIES)
    handle = await client.start(gated_then_signal, tag, id="paused-idle")
    # It waits for its signal: no task row, nothing pending.
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.history WHERE run_id = %s AND type = "
                                 "'ActivityCompleted'", (handle.run_id,)) == [(1,)]
                     and sql("SELECT count(*) FROM cairn.workflow_tasks WHERE run_id = %s",
                             (handle.run_id,)) == [(0,)])
    length = sql("SELECT max(seq) FROM cairn.history WHERE run_id = %s", (handle.run_id,))
    await handle.pause()
    assert sql("SELECT pause ? 'placeholder' FROM cairn.workflow_tasks WHERE run_id = %s",
               (handle.run_id,)) == [(True,)]
    # Resumed with nothing in the inbox: the placeholder goes, history is untouched.
    assert await handle.unpause() is True
    assert sql("SELECT count(*) FROM cairn.workflow_tasks WHERE run_id = %s", (handle.run_id,)) == [(0,)]
    assert sql("SELECT max(seq) FROM cairn.history WHERE run_id = %s", (handle.run_id,)) == length
    # Paused again and signalled: the signal waits in the inbox.
    await handle.pause()
    await handle.signal("note", "late")
    await _control(client, tag)
    assert sql("SELECT max(seq) FROM cairn.history WHERE run_id = %s", (handle.run_id,)) == length
    await handle.unpause()
    assert await handle.result(timeout=30) == [f"opened {tag}", "late", f"done {tag}"]
    await _clean(db_url)


async def test_timer_fires_into_a_paused_runs_inbox(client, start_worker, sql, db_url):
    await start_worker(workflows=WORKFLOWS, activities=ACTIVITIES)
    handle = await client.start(sleeper, 0.5, id="paused-sleeper")
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.timers WHERE run_id = %s AND seq > 0",
                                 (handle.run_id,)) == [(1,)])
    await handle.pause()
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.inbox WHERE run_id = %s AND type = 'TimerFired'",
                                 (handle.run_id,)) == [(1,)])
    await _control(client, "timer")
    assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s AND type = 'TimerFired'",
               (handle.run_id,)) == [(0,)]
    await handle.unpause()
    assert await handle.result(timeout=30) == "woke"
    await _clean(db_url)


async def test_pause_of_a_closed_run_writes_nothing(client, start_worker, sql, db_url):
    await start_worker(workflows=WORKFLOWS, activities=ACTIVITIES)
    handle = await client.start(one_step, "closed", id="paused-closed")
    await handle.result(timeout=30)
    with pytest.raises(WorkflowClosed):
        await handle.pause("too late")
    with pytest.raises(WorkflowClosed):
        await handle.pause_activity(2)
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(0,)]
    assert await client.list_pauses() == []
    with pytest.raises(InputValidationError):
        await client.pause(note="nothing named")
    await _clean(db_url)


async def test_paused_activity_type_and_queue(client, start_worker, sql, db_url):
    await start_worker(workflows=WORKFLOWS, activities=ACTIVITIES)
    await start_worker(activities=ACTIVITIES, queues=["side"])
    assert await client.pause(activity_type="step", queue="side", note="side effects off") is True
    assert await client.pause(activity_type="step", queue="side") is False  # there already
    on_side = await client.start(on_queue, "side", "side", id="type-paused")
    await _control(client, "type")  # step on the default queue is not paused
    # Scheduled, never leased (not eagerly either).
    assert sql("SELECT attempt, lease_owner FROM cairn.activity_tasks WHERE run_id = %s", (on_side.run_id,)) == \
        [(0, None)]
    kinds = {(p.kind, p.type, p.queue, p.note) for p in await client.list_pauses()}
    assert kinds == {("activity_type", "step", "side", "side effects off")}
    assert await client.unpause(activity_type="step", queue="side") is True
    assert await on_side.result(timeout=30) == "done side"

    assert await client.pause(queue="side") is True
    again = await client.start(on_queue, "side2", "side", id="queue-paused")
    await _control(client, "queue")
    assert sql("SELECT attempt, lease_owner FROM cairn.activity_tasks WHERE run_id = %s", (again.run_id,)) == \
        [(0, None)]
    assert [p.kind for p in await client.list_pauses()] == ["queue"]
    assert await client.unpause(queue="side") is True
    assert await client.unpause(queue="side") is False
    assert await again.result(timeout=30) == "done side2"

    # Every queue: not even leased eagerly by the worker that records its scheduling.
    assert await client.pause(activity_type="step") is True
    eager = await client.start(one_step, "eager", id="type-paused-eager")
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.history WHERE run_id = %s AND type = "
                                 "'ActivityScheduled'", (eager.run_id,)) == [(1,)])
    assert sql("SELECT attempt, lease_owner FROM cairn.activity_tasks WHERE run_id = %s", (eager.run_id,)) == \
        [(0, None)]
    assert await client.unpause(activity_type="step") is True
    assert await eager.result(timeout=30) == "done eager"
    await _clean(db_url)


async def test_pausing_retry_policy_then_unpause_or_fail(client, start_worker, sql, db_url):
    await start_worker(workflows=WORKFLOWS, activities=ACTIVITIES)
    fixed = await client.start(pausing_policy, "fixed", id="exhausted-fixed")
    given_up = await client.start(pausing_policy, "given-up", id="exhausted-failed")
    for h in (fixed, given_up):
        await wait_until(lambda h=h: sql("SELECT paused FROM cairn.activity_tasks WHERE run_id = %s",
                                         (h.run_id,)) == [(True,)], timeout=30)
    d = await fixed.describe()
    [act] = d.pending_activities
    assert act["pause"]["reason"] == "exhausted"
    assert act["pause"]["retry_state"] == "maximum_attempts"
    assert act["last_failure"]["type"] == "ConnectionError"
    pauses = {p.workflow_id: p for p in await client.list_pauses()}
    assert pauses["exhausted-fixed"].kind == "activity"
    assert pauses["exhausted-fixed"].attempt == 2
    assert "the service is down" in pauses["exhausted-fixed"].note
    assert d.status == "running"

    _healthy.add("fixed")  # the operator fixes the cause, then resumes: a fresh set of attempts
    assert await fixed.unpause_activity(act["seq"]) is True
    assert await fixed.result(timeout=30) == "healthy fixed on attempt 1"
    await given_up.fail_activity(act["seq"], "the service is gone for good")
    assert (await given_up.result(timeout=30)).startswith("failed: ")
    assert await client.list_pauses() == []
    await _clean(db_url)
