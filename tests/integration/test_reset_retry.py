"""Reset (re-drive a run from one of its workflow tasks) and retry (start it again)."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime

import pytest

from cairn import (
    ApplicationError,
    InputValidationError,
    RetryPolicy,
    WorkflowAlreadyStarted,
    WorkflowFailure,
    WorkflowTerminated,
    activity,
    workflow,
)
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.workflow import WorkflowInfo, definition_of
from support import events, run_status, types_of, wait_until

_charge_broken = {"on": True}
NO_RETRY = RetryPolicy(maximum_attempts=1)


@activity.defn
async def prepare(amount: int) -> int:
    return amount * 2


@activity.defn
async def charge(amount: int) -> str:
    if _charge_broken["on"]:
        raise ApplicationError("card declined", type="Declined", non_retryable=True)
    return f"charged {amount}"


@workflow.defn
async def order(amount: int) -> dict:
    token = str(workflow.uuid4())  # before the reset point
    doubled = await workflow.execute_activity(prepare, amount, start_to_close_timeout=10)
    receipt = await workflow.execute_activity(charge, doubled, start_to_close_timeout=10, retry_policy=NO_RETRY)
    return {"token": token, "receipt": receipt, "after": str(workflow.uuid4())}


def seeded_uuid(run_id: str, nth: int = 0) -> str:
    """The nth workflow.uuid4() of a run whose randomness is seeded from run_id."""
    rng = random.Random(uuid.UUID(run_id).int)
    for _ in range(nth):
        rng.getrandbits(128)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


async def failed_order(client, sql, wid: str, **start: object):
    _charge_broken["on"] = True
    h = await client.start(order, 21, id=wid, **start)
    with pytest.raises(WorkflowFailure, match="card declined"):
        await h.result(timeout=20)
    assert run_status(sql, h.run_id) == "failed"
    return h


def task_before(evs: list[tuple[int, str, dict]], activity_type: str) -> int:
    """The seq of the WorkflowTaskStarted of the task that scheduled an activity."""
    sched = next(s for s, t, d in evs if t == "ActivityScheduled" and d["activity_type"] == activity_type)
    return max(s for s, t, _ in evs if t == "WorkflowTaskStarted" and s < sched)


async def test_reset_a_failed_run_after_fixing_the_activity(client, start_worker, sql):
    await start_worker(workflows=[order], activities=[prepare, charge])
    old = await failed_order(client, sql, "reset-fix", search_attributes={"customer": "acme"}, memo={"m": 1})
    old_events = events(sql, old.run_id)
    n = task_before(old_events, "charge")

    _charge_broken["on"] = False
    new = await client.reset("reset-fix", to_seq=n, reason="fixed the card processor")
    assert new.run_id != old.run_id
    result = await new.result(timeout=20)
    assert result["receipt"] == "charged 42"
    # The randomness of the old run survives: the same token as the old run drew, and
    # the draw after the reset point continues the same sequence.
    assert result["token"] == seeded_uuid(old.run_id, 0)
    assert result["after"] == seeded_uuid(old.run_id, 1)

    assert run_status(sql, old.run_id) == "failed"  # the old run is left as it was
    assert run_status(sql, new.run_id) == "completed"
    new_events = events(sql, new.run_id)
    # The new history starts with the copied events (WorkflowStarted also carries the seed)...
    assert new_events[0][2] == {**old_events[0][2], "seed": old.run_id}
    assert new_events[1:n - 1] == old_events[1:n - 1]
    # ...then the reset task re-delivers its input (prepare's result) to the current code.
    assert new_events[n - 1][1] == "WorkflowTaskStarted"
    assert new_events[n][1:] == old_events[n][1:]  # ActivityCompleted of prepare, same data
    assert [t for _, t, _ in new_events[n + 1:]] == [
        "ActivityScheduled", "WorkflowTaskStarted", "ActivityCompleted", "WorkflowCompleted"]
    # Nothing of prepare ran again.
    assert [d["activity_type"] for _, t, d in new_events if t == "ActivityScheduled"] == ["prepare", "charge"]

    d = await new.describe()
    assert d.reset_from == {"kind": "reset", "run_id": old.run_id, "seq": n, "reason": "fixed the card processor"}
    assert d.search_attributes == {"customer": "acme"}
    assert d.memo == {"m": 1}
    # The newest run of the id is the new one.
    assert (await client.get_handle("reset-fix").describe()).run_id == new.run_id

    # The new run's history replays against the code (with its own run id: the seed decides).
    info = WorkflowInfo("reset-fix", new.run_id, "order", "default", "default", d.created_at)
    replay(definition_of(order), info, [Event(s, t, dd) for s, t, dd in new_events])


@activity.defn
async def far_job(tag: str) -> str:
    return f"done {tag}"


@workflow.defn
async def juggler() -> str:
    long_timer = asyncio.ensure_future(workflow.sleep(3600))
    job = workflow.start_activity(far_job, "x", start_to_close_timeout=60, queue="elsewhere")
    await workflow.sleep(0.05)
    marker = str(workflow.uuid4())
    workflow.upsert_search_attributes({"phase": "after-nap"})
    await asyncio.gather(long_timer, job)
    return marker


async def test_reset_a_running_run_recreates_pending_work(client, start_worker, sql):
    await start_worker(workflows=[juggler])
    old = await client.start(juggler, id="reset-mid", search_attributes={"phase": "start"})
    await wait_until(lambda: "UpsertSearchAttributes" in types_of(sql, old.run_id), what="the second task")
    old_events = events(sql, old.run_id)
    markers = [s for s, t, _ in old_events if t == "WorkflowTaskStarted"]
    assert len(markers) == 2
    timers = {s: d for s, t, d in old_events if t == "TimerStarted"}
    long_seq = next(s for s, d in timers.items() if d["duration"] == 3600)
    act_seq = next(s for s, t, _ in old_events if t == "ActivityScheduled")

    new = await client.reset("reset-mid", to_last_task=True)

    # The old run was open: it is terminated, in the same transaction, and its queue rows are gone.
    assert run_status(sql, old.run_id) == "terminated"
    last = events(sql, old.run_id)[-1]
    assert last[1] == "WorkflowTerminated"
    assert last[2] == {"reason": f"reset to seq {markers[-1]}", "reset_run_id": new.run_id}
    for table in ("timers", "activity_tasks", "workflow_tasks", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table} WHERE run_id = %s", (old.run_id,)) == [(0,)]
    with pytest.raises(WorkflowTerminated):
        await old.result(timeout=5)

    # The new run re-runs the last task (the short timer's firing) with the current code.
    await wait_until(lambda: "UpsertSearchAttributes" in types_of(sql, new.run_id), what="the reset task")
    new_events = events(sql, new.run_id)
    assert new_events[1:markers[-1] - 1] == old_events[1:markers[-1] - 1]
    reran = new_events[markers[-1] - 1:]
    assert [t for _, t, _ in reran] == [t for _, t, _ in old_events[markers[-1] - 1:]]
    # Pending at the reset point, re-created: the long timer at its original fire time...
    [(seq, fire_at)] = sql("SELECT seq, fire_at FROM cairn.timers WHERE run_id = %s", (new.run_id,))
    assert seq == long_seq
    assert fire_at == datetime.fromisoformat(timers[long_seq]["fire_at"])
    # ...and the activity as a fresh attempt with its recorded options (no worker serves its queue).
    [row] = sql("""SELECT seq, activity_type, queue, attempt, lease_owner, input, options, workflow_id
                   FROM cairn.activity_tasks WHERE run_id = %s""", (new.run_id,))
    sched = next(d for s, t, d in old_events if s == act_seq)
    assert row == (act_seq, "far_job", "elsewhere", 0, None, ["x"], sched["options"], "reset-mid")
    assert (await new.describe()).search_attributes == {"phase": "after-nap"}

    # Randomness: the draw in the re-run task equals the old run's draw.
    upsert_seq = next(s for s, t, _ in reran if t == "UpsertSearchAttributes")
    assert upsert_seq == next(s for s, t, _ in old_events if t == "UpsertSearchAttributes")

    # The re-created activity runs once a worker serves its queue; the run then waits on its timer.
    await start_worker(activities=[far_job], queues=["elsewhere"])
    await wait_until(lambda: "ActivityCompleted" in types_of(sql, new.run_id), what="the activity")
    # Fire the long timer now: the run completes with the marker the old run drew.
    sql("UPDATE cairn.timers SET fire_at = now() WHERE run_id = %s", (new.run_id,))
    sql("SELECT pg_notify('cairn_timer', '')")
    assert await new.result(timeout=20) == seeded_uuid(old.run_id, 0)


async def test_reset_to_an_invalid_seq_writes_nothing(client, start_worker, sql):
    await start_worker(workflows=[order], activities=[prepare, charge])
    old = await failed_order(client, sql, "reset-bad")
    markers = [s for s, t, _ in events(sql, old.run_id) if t == "WorkflowTaskStarted"]
    before = sql("SELECT count(*) FROM cairn.runs")
    for seq in (1, 3, 999):
        with pytest.raises(InputValidationError, match="valid seqs: " + ", ".join(map(str, markers))):
            await client.reset("reset-bad", to_seq=seq)
    with pytest.raises(InputValidationError, match="exactly one"):
        await client.reset("reset-bad")
    with pytest.raises(InputValidationError, match="exactly one"):
        await client.reset("reset-bad", to_seq=2, to_last_task=True)
    with pytest.raises(InputValidationError, match="positive integer"):
        await client.reset("reset-bad", to_seq=0)
    assert sql("SELECT count(*) FROM cairn.runs") == before
    assert run_status(sql, old.run_id) == "failed"


async def test_reset_refuses_when_another_run_is_open(client, start_worker, sql):
    await start_worker(workflows=[order], activities=[prepare, charge])
    old = await failed_order(client, sql, "reset-twice")
    n = task_before(events(sql, old.run_id), "charge")
    _charge_broken["on"] = True
    first = await old.reset(to_seq=n)
    with pytest.raises(WorkflowFailure):
        await first.result(timeout=20)
    # A second reset of the (closed) old run while a newer run is open is refused.
    sql("UPDATE cairn.runs SET status = 'running', closed_at = NULL WHERE run_id = %s", (first.run_id,))
    with pytest.raises(WorkflowAlreadyStarted):
        await client.reset("reset-twice", run_id=old.run_id, to_seq=n)
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'reset-twice'") == [(2,)]


async def test_retry_a_failed_run(client, start_worker, sql):
    await start_worker(workflows=[order], activities=[prepare, charge])
    old = await failed_order(client, sql, "retry-1", search_attributes={"customer": "acme"}, memo={"m": 2})
    _charge_broken["on"] = False
    new = await client.retry("retry-1")
    result = await new.result(timeout=20)
    assert result["receipt"] == "charged 42"
    assert result["token"] == seeded_uuid(new.run_id)  # a fresh run: fresh randomness
    assert run_status(sql, old.run_id) == "failed"
    started = events(sql, new.run_id)[0][2]
    assert started == events(sql, old.run_id)[0][2]  # the original input, type, queue, attributes
    d = await new.describe()
    assert d.reset_from == {"kind": "retry", "run_id": old.run_id, "seq": None, "reason": "retry"}
    assert (d.workflow_type, d.queue, d.search_attributes, d.memo) == ("order", "default", {"customer": "acme"},
                                                                      {"m": 2})
    # Prepare ran again: a retry starts from the beginning.
    assert [d["activity_type"] for _, t, d in events(sql, new.run_id) if t == "ActivityScheduled"] == [
        "prepare", "charge"]

    # The new run completed: it cannot be retried, and neither can a running one.
    with pytest.raises(InputValidationError, match="is completed"):
        await client.retry("retry-1")
    running = await client.start(juggler, id="retry-running")
    with pytest.raises(InputValidationError, match="is running"):
        await running.retry()
    assert sql("SELECT count(*) FROM cairn.runs") == [(3,)]


async def test_retry_a_terminated_run(client, sql):
    h = await client.start(juggler, id="retry-term")
    await h.terminate("stop")
    new = await client.retry("retry-term", run_id=h.run_id)
    assert run_status(sql, new.run_id) == "running"
    assert types_of(sql, new.run_id) == ["WorkflowStarted"]
    assert sql("SELECT count(*) FROM cairn.workflow_tasks WHERE run_id = %s", (new.run_id,)) == [(1,)]
