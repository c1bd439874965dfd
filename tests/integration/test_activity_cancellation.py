"""Activity cancellation types on a real worker and database: try_cancel,
wait_cancellation_completed and abandon, with a running heartbeating attempt and with one
that has not started."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cairn import RetryPolicy, activity, workflow
from support import events, run_status, wait_until

ONCE = RetryPolicy(maximum_attempts=1)
# tag -> what the activity did, in order
_log: dict[str, list[str]] = {}
_gates: dict[str, asyncio.Event] = {}


def log_of(tag: str) -> list[str]:
    return _log.setdefault(tag, [])


def gate(tag: str) -> asyncio.Event:
    return _gates.setdefault(tag, asyncio.Event())


@activity.defn
async def heartbeater(tag: str) -> str:
    """Heartbeats until cancelled; on cancellation cleans up until the test opens the gate
    (then re-raises), or runs on to completion once the gate opens."""
    log_of(tag).append("started")
    try:
        while not gate(tag).is_set():
            activity.heartbeat(len(log_of(tag)))
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        log_of(tag).append("cancel seen")
        await gate(tag).wait()  # the clean-up the workflow waits for
        log_of(tag).append("stopped")
        raise
    log_of(tag).append("finished")
    return f"{tag} finished"


@activity.defn
def polling_thread(tag: str) -> str:
    """A thread: polls activity.is_cancelled() and returns early when cancelled."""
    log_of(tag).append("started")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if activity.is_cancelled():
            log_of(tag).append("cancel seen")
            return "stopped early"
        activity.heartbeat()  # keeps the flusher sending (and so learning) every 50 ms
        time.sleep(0.05)
    return "ran out"


@activity.defn
def heartbeating_thread(tag: str) -> str:
    """A thread: its heartbeat raises CancelledError once the workflow cancelled it."""
    log_of(tag).append("started")
    try:
        for _ in range(600):
            activity.heartbeat()
            time.sleep(0.05)
    except asyncio.CancelledError:
        log_of(tag).append("cancel seen")
        raise
    return "ran out"


@activity.defn
async def wait_gate(tag: str) -> str:
    # A gate of its own: the abandoned activity's completion must reach history while the
    # run is still open (one gate for both let the run close first, once in CI).
    await asyncio.wait_for(gate(f"{tag}:after").wait(), 30)
    return "released"


@workflow.defn
async def cancellable(tag: str, cancellation_type: str, act: str = "heartbeater", queue: str = "") -> dict[str, Any]:
    """Runs one activity; a cancel request of the run cancels it. After an abandon, the run
    stays open on a second activity so the abandoned one can finish."""
    handle = workflow.start_activity(act, tag, start_to_close_timeout=60, heartbeat_timeout=10,
                                     retry_policy=ONCE, cancellation_type=cancellation_type,  # type: ignore[arg-type]
                                     queue=queue or None)
    try:
        return {"outcome": "completed", "result": await handle}
    except asyncio.CancelledError:
        pass
    after = await workflow.execute_activity(wait_gate, tag, start_to_close_timeout=60) \
        if cancellation_type == "abandon" else None
    return {"outcome": "cancelled", "handle_cancelled": handle.cancelled(), "after": after}


async def start_and_cancel_when_running(client: Any, start_worker: Any, tag: str, ctype: str,
                                        act: str = "heartbeater") -> Any:
    await start_worker(workflows=[cancellable], activities=[heartbeater, polling_thread, heartbeating_thread,
                                                             wait_gate])
    handle = await client.start(cancellable, tag, ctype, act, id=tag)
    await wait_until(lambda: "started" in log_of(tag), what=f"{tag}'s activity to start")
    await handle.cancel("called off")
    return handle


def activity_events(sql: Any, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    return [(s, t, d) for s, t, d in events(sql, run_id) if t != "WorkflowTaskStarted"]


async def test_try_cancel_resolves_at_once_and_the_attempt_learns_it_at_renewal(client, start_worker, sql):
    tag = "try-running"
    handle = await start_and_cancel_when_running(client, start_worker, tag, "try_cancel")
    assert await handle.result(timeout=20) == {"outcome": "cancelled", "handle_cancelled": True, "after": None}
    await wait_until(lambda: "cancel seen" in log_of(tag), what="the attempt to be cancelled")
    run_id = handle.run_id
    types = [t for _, t, _ in activity_events(sql, run_id)]
    assert types == ["WorkflowStarted", "ActivityScheduled", "CancelRequested", "ActivityCancelRequested",
                     "WorkflowCompleted"]
    # The run closed before the attempt had stopped (it is still cleaning up now).
    assert "stopped" not in log_of(tag)
    gate(tag).set()
    await wait_until(lambda: "stopped" in log_of(tag), what="the attempt to stop")
    assert sql("SELECT count(*) FROM cairn.activity_tasks") == [(0,)]


async def test_wait_cancellation_completed_resolves_only_after_the_attempt_stopped(client, start_worker, sql):
    tag = "wait-running"
    handle = await start_and_cancel_when_running(client, start_worker, tag, "wait_cancellation_completed")
    run_id = handle.run_id
    await wait_until(lambda: "cancel seen" in log_of(tag), what="the attempt to see the cancel")
    seq = next(s for s, t, _ in events(sql, run_id) if t == "ActivityScheduled")
    # The attempt is cleaning up: the row is kept and flagged, the run waits for it.
    assert sql("SELECT cancel_requested, lease_owner IS NOT NULL FROM cairn.activity_tasks "
               "WHERE run_id = %s AND seq = %s", (run_id, seq)) == [(True, True)]
    assert run_status(sql, run_id) == "running"
    assert [t for _, t, _ in activity_events(sql, run_id)] == [
        "WorkflowStarted", "ActivityScheduled", "CancelRequested", "ActivityCancelRequested"]
    gate(tag).set()
    assert await handle.result(timeout=20) == {"outcome": "cancelled", "handle_cancelled": True, "after": None}
    assert log_of(tag) == ["started", "cancel seen", "stopped"]
    history = activity_events(sql, run_id)
    assert [(t, d) for _, t, d in history[3:]] == [
        ("ActivityCancelRequested", {"activity_seq": seq, "cancellation_type": "wait_cancellation_completed"}),
        ("ActivityCancelled", {"activity_seq": seq, "attempt": 1, "started": True}),
        ("WorkflowCompleted", {"result": {"outcome": "cancelled", "handle_cancelled": True, "after": None}}),
    ]
    scheduled = history[1][2]
    assert scheduled["cancellation_type"] == "wait_cancellation_completed"
    # The cancel and the cancelled event are in different workflow tasks.
    all_events = events(sql, run_id)
    between = [t for _, t, _ in all_events][[t for _, t, _ in all_events].index("ActivityCancelRequested"):]
    assert between[:3] == ["ActivityCancelRequested", "WorkflowTaskStarted", "ActivityCancelled"]
    for table in ("activity_tasks", "workflow_tasks", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table}") == [(0,)], table


async def test_wait_cancellation_completed_with_a_thread_whose_heartbeat_raises(client, start_worker, sql):
    tag = "wait-thread"
    handle = await start_and_cancel_when_running(client, start_worker, tag, "wait_cancellation_completed",
                                                 "heartbeating_thread")
    assert (await handle.result(timeout=20))["outcome"] == "cancelled"
    assert log_of(tag) == ["started", "cancel seen"]
    types = [t for _, t, _ in activity_events(sql, handle.run_id)]
    assert types[-3:] == ["ActivityCancelRequested", "ActivityCancelled", "WorkflowCompleted"]


async def test_wait_cancellation_completed_records_the_outcome_of_an_attempt_that_finished_anyway(
        client, start_worker, sql):
    tag = "wait-finished"
    handle = await start_and_cancel_when_running(client, start_worker, tag, "wait_cancellation_completed",
                                                 "polling_thread")
    # The run's task was cancelled, so the workflow sees CancelledError; history keeps the
    # activity's real outcome.
    assert (await handle.result(timeout=20))["outcome"] == "cancelled"
    history = activity_events(sql, handle.run_id)
    assert [t for _, t, _ in history][-3:] == ["ActivityCancelRequested", "ActivityCompleted", "WorkflowCompleted"]
    assert history[-2][2]["result"] == "stopped early"
    assert log_of(tag) == ["started", "cancel seen"]


async def test_abandon_resolves_at_once_and_the_activity_runs_to_completion(client, start_worker, sql):
    tag = "abandon-running"
    handle = await start_and_cancel_when_running(client, start_worker, tag, "abandon")
    run_id = handle.run_id
    await wait_until(lambda: sum(t == "ActivityScheduled" for _, t, _ in events(sql, run_id)) == 2,
                     what="the workflow to move on after abandoning")
    # Nothing was sent to the abandoned activity: it is still heartbeating.
    assert log_of(tag) == ["started"]
    types = [t for _, t, _ in activity_events(sql, run_id)]
    assert types == ["WorkflowStarted", "ActivityScheduled", "CancelRequested", "ActivityScheduled"]
    assert sql("SELECT cancel_requested FROM cairn.activity_tasks WHERE run_id = %s ORDER BY seq",
               (run_id,)) == [(False,), (False,)]
    gate(tag).set()
    # The run does not wait for the abandoned activity: it finishes on its own, soon after the gate.
    await wait_until(lambda: log_of(tag) == ["started", "finished"], what="the abandoned activity to finish")
    first = activity_events(sql, run_id)[1][0]
    await wait_until(lambda: any(t == "ActivityCompleted" and d["activity_seq"] == first
                                 for _, t, d in activity_events(sql, run_id)),
                     what="the abandoned activity's completion in history")
    gate(f"{tag}:after").set()
    result = await handle.result(timeout=20)
    assert result == {"outcome": "cancelled", "handle_cancelled": True, "after": "released"}
    history = activity_events(sql, run_id)
    # Its completion landed in history and was ignored by the workflow.
    (done,) = [d for _, t, d in history if t == "ActivityCompleted" and d["activity_seq"] == first]
    assert done["result"] == "abandon-running finished"
    assert "ActivityCancelRequested" not in [t for _, t, _ in history]


@pytest.mark.parametrize("ctype", ["try_cancel", "wait_cancellation_completed"])
async def test_an_attempt_not_yet_started_is_cancelled_at_once(client, start_worker, sql, ctype):
    await start_worker(workflows=[cancellable], activities=[wait_gate])
    tag = f"not-started-{ctype}"
    # The activity's queue has no worker: it never starts.
    handle = await client.start(cancellable, tag, ctype, "heartbeater", "nobody-serves-this", id=tag)
    run_id = handle.run_id
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.activity_tasks WHERE run_id = %s", (run_id,))[0][0],
                     what="the activity task row")
    await handle.cancel("called off")
    assert await handle.result(timeout=20) == {"outcome": "cancelled", "handle_cancelled": True, "after": None}
    history = activity_events(sql, run_id)
    seq = history[1][0]
    if ctype == "try_cancel":
        assert [t for _, t, _ in history] == [
            "WorkflowStarted", "ActivityScheduled", "CancelRequested", "ActivityCancelRequested", "WorkflowCompleted"]
    else:
        assert [(t, d) for _, t, d in history[3:5]] == [
            ("ActivityCancelRequested", {"activity_seq": seq, "cancellation_type": ctype}),
            ("ActivityCancelled", {"activity_seq": seq, "attempt": 0, "started": False}),
        ]
        assert history[5][1] == "WorkflowCompleted"
    assert log_of(tag) == []
    for table in ("activity_tasks", "workflow_tasks", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table}") == [(0,)], table


async def test_an_unknown_cancellation_type_is_refused_before_anything_is_written():
    from cairn.activity import validate_call
    from cairn.errors import InputValidationError

    with pytest.raises(InputValidationError, match="cancellation_type must be one of"):
        validate_call(heartbeater, ("x",), start_to_close_timeout=1, schedule_to_close_timeout=None,
                         heartbeat_timeout=None, retry_policy=None, queue=None, cancellation_type="later")
