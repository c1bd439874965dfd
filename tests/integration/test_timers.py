"""Durable timers: workflow.sleep, asyncio.sleep, concurrent timers, and wait_for timeouts
that cancel an activity."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from cairn import activity, workflow
from support import events, outcomes_per_activity, types_of, wait_until


@workflow.defn
async def sleepy(kind: str) -> dict[str, Any]:
    before = workflow.now()
    if kind == "workflow.sleep":
        await workflow.sleep(timedelta(seconds=0.3))
    else:
        await asyncio.sleep(0.3)
    after = workflow.now()
    return {"elapsed": (after - before).total_seconds()}


async def test_workflow_sleep_and_asyncio_sleep(client, start_worker, sql):
    await start_worker(workflows=[sleepy])
    handles = [await client.start(sleepy, kind, id=f"sleep-{kind}") for kind in ("workflow.sleep", "asyncio")]
    for h in handles:
        out = await h.result(timeout=20)
        assert out["elapsed"] >= 0.3  # workflow time moved past the timer's fire time
        evs = events(sql, h.run_id)
        assert [t for _, t, _ in evs] == ["WorkflowStarted", "WorkflowTaskStarted", "TimerStarted",
                                          "WorkflowTaskStarted", "TimerFired", "WorkflowCompleted"]
        started = next(d for _, t, d in evs if t == "TimerStarted")
        fired = next(d for _, t, d in evs if t == "TimerFired")
        assert started["duration"] == 0.3
        assert fired["timer_seq"] == next(s for s, t, _ in evs if t == "TimerStarted")
    assert sql("SELECT count(*) FROM cairn.timers") == [(0,)]


@workflow.defn
async def concurrent_timers() -> list[str]:
    order: list[str] = []

    async def nap(name: str, seconds: float) -> None:
        await workflow.sleep(seconds)
        order.append(name)

    await asyncio.gather(nap("slow", 0.6), nap("fast", 0.2), nap("medium", 0.4))
    return order


async def test_concurrent_timers_with_gather(client, start_worker, sql):
    worker = await start_worker(workflows=[concurrent_timers])
    handle = await client.start(concurrent_timers, id="gather-timers")
    assert await handle.result(timeout=20) == ["fast", "medium", "slow"]
    evs = events(sql, handle.run_id)
    started = {s: d for s, t, d in evs if t == "TimerStarted"}
    fired = [d["timer_seq"] for _, t, d in evs if t == "TimerFired"]
    assert sorted(d["duration"] for d in started.values()) == [0.2, 0.4, 0.6]
    assert sorted(fired) == sorted(started)  # each timer fired exactly once
    by_duration = {d["duration"]: s for s, d in started.items()}
    assert fired == [by_duration[0.2], by_duration[0.4], by_duration[0.6]]  # in fire_at order
    assert worker.stats.timers_fired == 3
    assert sql("SELECT count(*) FROM cairn.timers") == [(0,)]


_slow_state: dict[str, list[str]] = {}


@activity.defn
async def slow_call(tag: str) -> str:
    _slow_state.setdefault(tag, []).append("started")
    try:
        await asyncio.sleep(8)
    except asyncio.CancelledError:
        _slow_state[tag].append("cancelled")
        raise
    _slow_state[tag].append("finished")
    return "slow result"


@activity.defn
async def quick_call(x: int) -> int:
    return x + 1


@workflow.defn
async def race_timer(tag: str) -> dict[str, Any]:
    try:
        await asyncio.wait_for(workflow.start_activity(slow_call, tag, start_to_close_timeout=30), 0.3)
        timed_out = False
    except TimeoutError:
        timed_out = True
    # Stay open a while so the test can look at the database before the run closes.
    await workflow.sleep(1.0)
    # wait_for where the activity wins: the timeout timer is cancelled instead.
    fast = await asyncio.wait_for(workflow.start_activity(quick_call, 1, start_to_close_timeout=10), 30)
    return {"timed_out": timed_out, "fast": fast}


async def test_wait_for_timeout_cancels_the_activity(client, start_worker, sql):
    await start_worker(workflows=[race_timer], activities=[slow_call, quick_call])
    handle = await client.start(race_timer, "race", id="race-1")
    run_id = handle.run_id
    await wait_until(lambda: "ActivityCancelRequested" in types_of(sql, run_id), timeout=10,
                     what="ActivityCancelRequested in history")
    evs = events(sql, run_id)
    slow_seq = next(s for s, t, d in evs if t == "ActivityScheduled" and d["activity_type"] == "slow_call")
    cancel = next(d for _, t, d in evs if t == "ActivityCancelRequested")
    assert cancel["activity_seq"] == slow_seq
    # The run is still open, and the cancelled activity's task row is gone already.
    assert sql("SELECT status FROM cairn.runs WHERE run_id = %s", (run_id,)) == [("running",)]
    assert sql("SELECT count(*) FROM cairn.activity_tasks WHERE run_id = %s AND seq = %s",
               (run_id, slow_seq)) == [(0,)]
    # The running attempt hears about it through its lease renewal and is cancelled.
    await wait_until(lambda: _slow_state["race"] == ["started", "cancelled"], timeout=6,
                     what="the running attempt to be cancelled")

    assert await handle.result(timeout=20) == {"timed_out": True, "fast": 2}
    types = types_of(sql, run_id)
    # The slow activity never got an outcome; the fast one got exactly one.
    outcomes = outcomes_per_activity(sql, run_id)
    assert outcomes[(run_id, slow_seq)] == 0
    assert sorted(outcomes.values()) == [0, 1]
    # The wait_for timer of the fast call was cancelled, not fired.
    timer_seqs = {s: d for s, t, d in events(sql, run_id) if t == "TimerStarted"}
    fired = {d["timer_seq"] for _, t, d in events(sql, run_id) if t == "TimerFired"}
    cancelled = {d["timer_seq"] for _, t, d in events(sql, run_id) if t == "TimerCancelled"}
    assert len(timer_seqs) == 3
    assert len(fired) == 2
    assert len(cancelled) == 1
    assert fired | cancelled == set(timer_seqs)
    assert types.count("ActivityCancelRequested") == 1
    for table in ("activity_tasks", "timers", "workflow_tasks", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table}") == [(0,)], table
