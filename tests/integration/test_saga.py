"""Sagas on a real worker and database: which compensations run, in what order, how
often, under failure and under cancellation; what the failure and describe report."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from cairn import ApplicationError, RetryPolicy, WorkflowCancelled, WorkflowFailure, activity, workflow
from support import events, outcomes_per_activity, run_status, wait_until

N = 5
QUICK = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=2, jitter=0.0)

# (trip, action) in the order the activities ran, e.g. ("k3", "reserve-2"), ("k3", "release-1").
_log: list[tuple[str, str]] = []
_undo_gate = asyncio.Event()


class Trip(BaseModel):
    tag: str
    n: int = N
    fail_at: int = 0  # this step fails non-retryably
    block_at: int = 0  # this step runs until it is cancelled
    pre_register: bool = False  # register each compensation before its step
    parallel: bool = False
    continue_on_error: bool = True
    fail_undo: list[int] = []  # these compensations fail non-retryably
    gate_undo: int = 0  # this compensation waits for _undo_gate


@activity.defn
async def reserve(trip: Trip, i: int) -> str:
    _log.append((trip.tag, f"reserve-{i}"))
    if i == trip.fail_at:
        raise ApplicationError(f"no room at step {i}", type="NoRoom", non_retryable=True)
    if i == trip.block_at:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            _log.append((trip.tag, f"reserve-{i} cancelled"))
            raise
    return f"booking-{i}"


@activity.defn
async def release(trip: Trip, i: int) -> None:
    _log.append((trip.tag, f"release-{i}"))
    if i == trip.gate_undo:
        await asyncio.wait_for(_undo_gate.wait(), 20)
    if i in trip.fail_undo:
        raise ApplicationError(f"release {i} refused", type="Refused", non_retryable=True)


@workflow.defn
async def book_trip(trip: Trip) -> list[str]:
    bookings = []
    async with workflow.saga(parallel_compensation=trip.parallel, continue_on_error=trip.continue_on_error) as saga:
        for i in range(1, trip.n + 1):
            if trip.pre_register:
                saga.compensate(release, trip, i, start_to_close_timeout=30, retry_policy=QUICK)
            bookings.append(await workflow.execute_activity(reserve, trip, i, start_to_close_timeout=60,
                                                            retry_policy=QUICK))
            if not trip.pre_register:
                saga.compensate(release, trip, i, start_to_close_timeout=30, retry_policy=QUICK)
    return bookings


def log_of(tag: str) -> list[str]:
    return [action for t, action in _log if t == tag]


def scheduled(sql: Any, run_id: str, activity_type: str) -> list[tuple[int, int]]:
    """(seq, step) of the run's scheduled activities of one type, in seq order."""
    return [(s, d["input"][1]) for s, t, d in events(sql, run_id)
            if t == "ActivityScheduled" and d["activity_type"] == activity_type]


def assert_compensated_once_in_reverse(sql: Any, run_id: str, tag: str, steps: list[int]) -> None:
    """Exactly these steps were compensated, newest first, each once: in history (one
    scheduled activity, one completion) and in what the activities did."""
    undo = scheduled(sql, run_id, "release")
    assert [step for _, step in undo] == steps[::-1]
    outcomes = outcomes_per_activity(sql, run_id)
    assert all(outcomes[(run_id, seq)] == 1 for seq, _ in undo)
    completions = [d["activity_seq"] for _, t, d in events(sql, run_id) if t == "ActivityCompleted"]
    assert [seq for seq in completions if seq in dict(undo)] == [seq for seq, _ in undo]
    assert [a for a in log_of(tag) if a.startswith("release")] == [f"release-{i}" for i in steps[::-1]]


@pytest.mark.parametrize("pre_register", [False, True], ids=["after-step", "pre-registered"])
async def test_failing_at_each_step_compensates_exactly_the_steps_before_it(client, start_worker, sql, pre_register):
    await start_worker(workflows=[book_trip], activities=[reserve, release])
    trips = {k: Trip(tag=f"fail-{k}-{pre_register}", fail_at=k, pre_register=pre_register) for k in range(1, N + 1)}
    handles = {k: await client.start(book_trip, t, id=t.tag) for k, t in trips.items()}
    for k, handle in handles.items():
        with pytest.raises(WorkflowFailure) as info:
            await handle.result(timeout=30)
        run_id = handle.run_id
        assert run_id is not None
        assert run_status(sql, run_id) == "failed"
        assert info.value.type == "ActivityError"
        assert f"NoRoom: no room at step {k}" in info.value.message

        compensated = list(range(1, k + 1 if pre_register else k))
        assert [step for _, step in scheduled(sql, run_id, "reserve")] == list(range(1, k + 1))
        assert_compensated_once_in_reverse(sql, run_id, trips[k].tag, compensated)
        # The compensation outcome is in the failure's details, and in history.
        (saga,) = info.value.details["sagas"]
        assert saga["status"] == "compensated"
        assert [(c["seq"], c["status"]) for c in saga["compensations"]] == [
            (seq, "completed") for seq, _ in scheduled(sql, run_id, "release")]
        recorded = next(d for _, t, d in events(sql, run_id) if t == "WorkflowFailed")["failure"]
        assert recorded["sagas"] == [saga]
        markers = [d["event"] for _, t, d in events(sql, run_id) if t == "MarkerRecorded"]
        assert markers == ["started", "compensation_started", "compensation_ended"]


@pytest.mark.parametrize("pre_register", [False, True], ids=["after-step", "pre-registered"])
async def test_cancel_during_each_step_compensates_the_completed_steps(client, start_worker, sql, pre_register):
    await start_worker(workflows=[book_trip], activities=[reserve, release])
    trips = {k: Trip(tag=f"cancel-{k}-{pre_register}", block_at=k, pre_register=pre_register)
             for k in range(1, N + 1)}
    handles = {k: await client.start(book_trip, t, id=t.tag) for k, t in trips.items()}
    for k, handle in handles.items():
        tag = trips[k].tag
        await wait_until(lambda tag=tag, k=k: f"reserve-{k}" in log_of(tag), what=f"step {k} of {tag} to run")
        await handle.cancel("trip called off")
    for k, handle in handles.items():
        with pytest.raises(WorkflowCancelled):
            await handle.result(timeout=30)
        run_id = handle.run_id
        assert run_id is not None
        assert run_status(sql, run_id) == "cancelled"
        compensated = list(range(1, k + 1 if pre_register else k))
        assert_compensated_once_in_reverse(sql, run_id, trips[k].tag, compensated)
        history = events(sql, run_id)
        types = [t for _, t, _ in history]
        step_k = scheduled(sql, run_id, "reserve")[-1][0]
        cancel = types.index("CancelRequested")
        assert history[cancel + 1][1:] == ("ActivityCancelRequested", {"activity_seq": step_k})
        started, ended = [d for _, t, d in history if t == "MarkerRecorded"][1:]
        assert started["reason"] == {"type": "CancelledError", "message": "trip called off"}
        assert ended["status"] == "compensated"
        assert types[-1] == "WorkflowCancelled"
        # The interrupted step was told to stop.
        await wait_until(lambda tag=trips[k].tag, k=k: f"reserve-{k} cancelled" in log_of(tag), timeout=10,
                         what="the running step to be cancelled")


async def test_every_compensation_failure_is_reported(client, start_worker, sql):
    await start_worker(workflows=[book_trip], activities=[reserve, release])
    trip = Trip(tag="undo-fails", n=4, fail_at=4, fail_undo=[3, 1])
    handle = await client.start(book_trip, trip, id=trip.tag)
    with pytest.raises(WorkflowFailure) as info:
        await handle.result(timeout=30)
    assert "no room at step 4" in info.value.message  # the original error is the run's failure
    (saga,) = info.value.details["sagas"]
    assert saga["status"] == "compensation_failed"
    assert [(c["status"], (c.get("failure") or {}).get("cause")) for c in saga["compensations"]] == [
        ("failed", {"type": "Refused", "message": "release 3 refused"}),
        ("completed", None),
        ("failed", {"type": "Refused", "message": "release 1 refused"}),
    ]
    assert log_of(trip.tag)[-3:] == ["release-3", "release-2", "release-1"]
    assert run_status(sql, handle.run_id) == "failed"


async def test_stop_at_the_first_failing_compensation(client, start_worker, sql):
    await start_worker(workflows=[book_trip], activities=[reserve, release])
    trip = Trip(tag="undo-stops", n=4, fail_at=4, fail_undo=[2], continue_on_error=False)
    handle = await client.start(book_trip, trip, id=trip.tag)
    with pytest.raises(WorkflowFailure) as info:
        await handle.result(timeout=30)
    (saga,) = info.value.details["sagas"]
    assert [(c["activity_type"], c["status"]) for c in saga["compensations"]] == [
        ("release", "completed"), ("release", "failed"), ("release", "skipped")]
    assert [a for a in log_of(trip.tag) if a.startswith("release")] == ["release-3", "release-2"]
    assert [step for _, step in scheduled(sql, handle.run_id, "release")] == [3, 2]


async def test_parallel_compensations_run_at_once(client, start_worker, sql):
    await start_worker(workflows=[book_trip], activities=[reserve, release])
    trip = Trip(tag="parallel", n=4, fail_at=4, parallel=True)
    handle = await client.start(book_trip, trip, id=trip.tag)
    with pytest.raises(WorkflowFailure):
        await handle.result(timeout=30)
    history = events(sql, handle.run_id)
    started = next(i for i, (_, t, d) in enumerate(history) if t == "MarkerRecorded"
                   and d["event"] == "compensation_started")
    # All three compensations were scheduled by one workflow task, newest step first.
    batch = [(t, d.get("input", [None, None])[1]) for _, t, d in history[started + 1:started + 4]]
    assert batch == [("ActivityScheduled", 3), ("ActivityScheduled", 2), ("ActivityScheduled", 1)]
    assert sorted(a for a in log_of(trip.tag) if a.startswith("release")) == ["release-1", "release-2", "release-3"]
    assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}


async def test_describe_shows_the_saga_while_it_compensates_and_after(client, start_worker, sql):
    _undo_gate.clear()
    await start_worker(workflows=[book_trip], activities=[reserve, release])
    trip = Trip(tag="describe", n=3, fail_at=3, gate_undo=1)
    handle = await client.start(book_trip, trip, id=trip.tag)
    await wait_until(lambda: "release-1" in log_of(trip.tag), what="the last compensation to start")
    d = await handle.describe()
    assert d.status == "running"
    assert d.saga is not None
    assert d.saga["status"] == "compensating"
    assert d.saga["reason"]["type"] == "ActivityError"
    assert [(s["activity_type"], s["status"]) for s in d.saga["steps"]] == [
        ("reserve", "completed"), ("reserve", "completed"), ("reserve", "failed")]
    assert [(c["activity_type"], c["status"]) for c in d.saga["compensations"]] == [
        ("release", "completed"), ("release", "scheduled")]
    _undo_gate.set()
    with pytest.raises(WorkflowFailure):
        await handle.result(timeout=30)
    d = await handle.describe()
    assert d.sagas == [d.saga]
    assert d.saga is not None
    assert d.saga["status"] == "compensated"
    assert d.saga["steps"][2]["failure"] == {"type": "NoRoom", "message": "no room at step 3"}
    assert [c["status"] for c in d.saga["compensations"]] == ["completed", "completed"]
    assert d.to_json()["sagas"] == d.sagas


async def test_a_saga_that_succeeds_shows_completed(client, start_worker, sql):
    await start_worker(workflows=[book_trip], activities=[reserve, release])
    trip = Trip(tag="happy", n=2)
    handle = await client.start(book_trip, trip, id=trip.tag)
    assert await handle.result(timeout=30) == ["booking-1", "booking-2"]
    d = await handle.describe()
    assert d.saga is not None
    assert (d.saga["status"], len(d.saga["steps"]), d.saga["compensations"]) == ("completed", 2, [])
    assert not [a for a in log_of(trip.tag) if a.startswith("release")]
