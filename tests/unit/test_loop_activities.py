"""Activities on the deterministic loop: gather, wait, tasks, cancellation, failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from cairn import ActivityError, RetryPolicy, activity, workflow
from cairn.engine import history as h
from cairn.engine.history import Command
from cairn.engine.instance import replay

from .harness import Driver, completed, failed, fired, kinds

T = timedelta(seconds=30)


def scheduled(cmd: Command) -> str:
    assert cmd.type == h.ACTIVITY_SCHEDULED, cmd
    return str(cmd.data["activity_type"])


@workflow.defn
async def fan_out() -> list[Any]:
    return list(await asyncio.gather(
        workflow.execute_activity("a", 1, start_to_close_timeout=T),
        workflow.execute_activity("b", 2, start_to_close_timeout=T),
        workflow.execute_activity("c", 3, start_to_close_timeout=T),
    ))


def test_gather_schedules_every_activity_in_one_activation():
    d = Driver(fan_out)
    cmds = d.activate()
    assert kinds(cmds) == [(3, h.ACTIVITY_SCHEDULED), (4, h.ACTIVITY_SCHEDULED), (5, h.ACTIVITY_SCHEDULED)]
    assert [scheduled(c) for c in cmds] == ["a", "b", "c"]
    assert [c.data["input"] for c in cmds] == [[1], [2], [3]]
    assert {c.data["queue"] for c in cmds} == {"default"}


def test_gather_resolves_with_results_delivered_out_of_order():
    d = Driver(fan_out)
    d.activate()
    assert d.activate(completed(5, "C"), completed(3, "A"), after=1) == []
    assert d.activate(completed(4, "B"), after=1) == [Command(11, h.WORKFLOW_COMPLETED, {"result": ["A", "B", "C"]})]
    assert replay(d.definition, d.info, d.history).closed


def test_all_results_in_one_batch_complete_in_the_same_activation():
    d = Driver(fan_out)
    d.activate()
    cmds = d.activate(completed(4, "B"), completed(3, "A"), completed(5, "C"), after=1)
    assert cmds == [Command(10, h.WORKFLOW_COMPLETED, {"result": ["A", "B", "C"]})]


@workflow.defn
async def fan_out_catching() -> dict[str, Any]:
    try:
        await asyncio.gather(
            workflow.execute_activity("a", start_to_close_timeout=T),
            workflow.execute_activity("b", start_to_close_timeout=T),
        )
    except ActivityError as err:
        return {"activity": err.activity, "seq": err.seq, "attempts": err.attempts,
                "retry_state": err.retry_state, "cause_type": err.cause.type,
                "cause_message": err.cause.message, "cause_details": err.cause.details,
                "non_retryable": err.cause.non_retryable, "message": str(err), "type": err.type}
    return {}


def test_gather_with_one_failure_raises_activity_error_with_the_cause():
    d = Driver(fan_out_catching)
    d.activate()
    d.activate(completed(3, "fine"), failed(4, "Boom", "kaput", attempts=3, details={"k": 1}), after=1)
    assert d.result == {
        "activity": "b", "seq": 4, "attempts": 3, "retry_state": "maximum_attempts",
        "cause_type": "Boom", "cause_message": "kaput", "cause_details": {"k": 1},
        "non_retryable": False, "message": "activity b (seq 4) failed: Boom: kaput", "type": "ActivityError",
    }


def test_non_retryable_flag_reaches_the_cause():
    d = Driver(fan_out_catching)
    d.activate()
    d.activate(failed(3, "Fatal", "no", retry_state="non_retryable", non_retryable=True), after=1)
    assert d.result["non_retryable"] is True
    assert d.result["retry_state"] == "non_retryable"
    assert d.result["activity"] == "a"


@workflow.defn
async def fan_out_uncaught() -> None:
    await asyncio.gather(
        workflow.execute_activity("a", start_to_close_timeout=T),
        workflow.execute_activity("b", start_to_close_timeout=T),
    )


def test_uncaught_activity_failure_fails_the_workflow_with_activity_error():
    d = Driver(fan_out_uncaught)
    d.activate()
    cmds = d.activate(failed(3, "Boom", "kaput"), after=1)
    assert kinds(cmds) == [(7, h.WORKFLOW_FAILED)]
    failure = cmds[0].data["failure"]
    assert failure["type"] == "ActivityError"
    assert failure["message"] == "activity a (seq 3) failed: Boom: kaput"
    assert failure["details"] == {"type": "Boom", "message": "kaput", "details": None}
    assert "ActivityError" in failure["stack"]


@workflow.defn
async def first_completed() -> dict[str, Any]:
    fast = workflow.start_activity("fast", start_to_close_timeout=T)
    slow = workflow.start_activity("slow", start_to_close_timeout=T)
    done, pending = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
    for handle in pending:
        handle.cancel()
    (winner,) = done
    return {"winner": winner.activity, "seq": winner.seq, "result": winner.result()}


def test_wait_first_completed_and_cancel_the_loser():
    d = Driver(first_completed)
    assert [scheduled(c) for c in d.activate()] == ["fast", "slow"]
    assert d.activate(completed(4, "S"), after=1) == [
        Command(7, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 3}),
        Command(8, h.WORKFLOW_COMPLETED, {"result": {"winner": "slow", "seq": 4, "result": "S"}}),
    ]
    assert replay(d.definition, d.info, d.history).closed


@workflow.defn
async def wait_with_timeout() -> str:
    handle = workflow.start_activity("x", start_to_close_timeout=T)
    done, _ = await asyncio.wait([handle], timeout=5)
    return "done" if done else "still pending"


def test_wait_with_timeout_uses_a_durable_timer():
    d = Driver(wait_with_timeout)
    cmds = d.activate()
    assert kinds(cmds) == [(3, h.ACTIVITY_SCHEDULED), (4, h.TIMER_STARTED)]
    assert cmds[1].data["duration"] == 5
    assert d.activate(completed(3, 1), after=1) == [
        Command(7, h.TIMER_CANCELLED, {"timer_seq": 4}),
        Command(8, h.WORKFLOW_COMPLETED, {"result": "done"}),
    ]
    d2 = Driver(wait_with_timeout)
    d2.activate()
    # The timer fires first; the activity is left running (asyncio.wait does not cancel).
    assert d2.activate(fired(4), after=5) == [Command(7, h.WORKFLOW_COMPLETED, {"result": "still pending"})]


@workflow.defn
async def child_tasks() -> list[str]:
    async def step(name: str, pause: float) -> str:
        await asyncio.sleep(pause)
        return await workflow.execute_activity(name, start_to_close_timeout=T)

    first = asyncio.create_task(step("one", 1))
    second = asyncio.create_task(step("two", 2))
    return [await first, await second]


def test_create_task_runs_coroutines_concurrently():
    d = Driver(child_tasks)
    cmds = d.activate()
    assert [(c.seq, c.type, c.data["duration"]) for c in cmds] == [
        (3, h.TIMER_STARTED, 1), (4, h.TIMER_STARTED, 2)]
    assert [scheduled(c) for c in d.activate(fired(4), fired(3), after=2)] == ["two", "one"]
    # fired(4) was delivered first, so task "two" scheduled first (seq 8), then "one" (seq 9)
    assert d.activate(completed(9, "ONE"), completed(8, "TWO"), after=1) == [
        Command(13, h.WORKFLOW_COMPLETED, {"result": ["ONE", "TWO"]})]


@workflow.defn
async def cancel_task_awaiting_activity() -> str:
    task = asyncio.create_task(workflow.execute_activity("long", start_to_close_timeout=T))
    await asyncio.sleep(1)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "task cancelled"
    return "task finished"


def test_cancelling_a_task_that_awaits_an_activity_requests_activity_cancel():
    d = Driver(cancel_task_awaiting_activity)
    assert kinds(d.activate()) == [(3, h.TIMER_STARTED), (4, h.ACTIVITY_SCHEDULED)]
    assert d.activate(fired(3), after=1) == [
        Command(7, h.ACTIVITY_CANCEL_REQUESTED, {"activity_seq": 4}),
        Command(8, h.WORKFLOW_COMPLETED, {"result": "task cancelled"}),
    ]


@workflow.defn
async def awaits_cancelled_handle() -> None:
    handle = workflow.start_activity("x", start_to_close_timeout=T)
    handle.cancel()
    await handle


def test_main_coroutine_cancelled_without_a_cancel_request_fails_the_workflow():
    d = Driver(awaits_cancelled_handle)
    cmds = d.activate()
    assert kinds(cmds) == [(3, h.ACTIVITY_SCHEDULED), (4, h.ACTIVITY_CANCEL_REQUESTED), (5, h.WORKFLOW_FAILED)]
    assert cmds[2].data["failure"]["type"] == "CancelledError"


@workflow.defn
async def cancel_twice() -> str:
    handle = workflow.start_activity("x", start_to_close_timeout=T)
    handle.cancel()
    handle.cancel()
    return "ok"


def test_cancelling_a_handle_twice_records_one_cancel():
    assert kinds(Driver(cancel_twice).activate()) == [
        (3, h.ACTIVITY_SCHEDULED), (4, h.ACTIVITY_CANCEL_REQUESTED), (5, h.WORKFLOW_COMPLETED)]


@workflow.defn
async def options_recorded() -> None:
    await workflow.execute_activity(
        "remote", {"k": [1, 2]}, start_to_close_timeout=timedelta(minutes=1), schedule_to_close_timeout=300,
        heartbeat_timeout=timedelta(seconds=5), queue="gpu",
        retry_policy=RetryPolicy(maximum_attempts=4, non_retryable_error_types=("Fatal",)))


def test_activity_options_are_recorded_in_the_command():
    (cmd,) = Driver(options_recorded).activate()
    assert cmd.data["activity_type"] == "remote"
    assert cmd.data["queue"] == "gpu"
    assert cmd.data["input"] == [{"k": [1, 2]}]
    opts = cmd.data["options"]
    assert opts["start_to_close_timeout"] == 60.0
    assert opts["schedule_to_close_timeout"] == 300.0
    assert opts["heartbeat_timeout"] == 5.0
    assert opts["retry_policy"]["maximum_attempts"] == 4
    assert opts["retry_policy"]["non_retryable_error_types"] == ["Fatal"]
    assert RetryPolicy.model_validate(opts["retry_policy"]).maximum_attempts == 4


@workflow.defn
async def no_timeout() -> None:
    await workflow.execute_activity("x")


def test_activity_without_a_timeout_fails_the_workflow_with_a_clear_message():
    (cmd,) = Driver(no_timeout).activate()
    assert cmd.type == h.WORKFLOW_FAILED
    assert cmd.data["failure"]["type"] == "InputValidationError"
    assert "start_to_close_timeout" in cmd.data["failure"]["message"]


class Point(BaseModel):
    x: int
    y: int


@dataclass
class Box:
    label: str
    size: float


@activity.defn
async def make_point(box: Box) -> Point:
    raise AssertionError("never runs in unit tests")


@workflow.defn
async def typed_activity() -> dict[str, Any]:
    p = await workflow.execute_activity(make_point, Box("b", 1.5), start_to_close_timeout=T)
    return {"is_point": isinstance(p, Point), "sum": p.x + p.y}


def test_typed_activity_input_is_serialised_and_result_validated_into_the_model():
    d = Driver(typed_activity)
    (cmd,) = d.activate()
    assert cmd.data["activity_type"] == "make_point"
    assert cmd.data["input"] == [{"label": "b", "size": 1.5}]
    d.activate(completed(3, {"x": 2, "y": "3"}), after=1)
    assert d.result == {"is_point": True, "sum": 5}


def test_typed_activity_with_an_invalid_result_fails_the_workflow():
    d = Driver(typed_activity)
    d.activate()
    (cmd,) = d.activate(completed(3, {"x": "not a number"}), after=1)
    assert cmd.type == h.WORKFLOW_FAILED
    assert cmd.data["failure"]["type"] == "InputValidationError"
    assert "activity make_point: result is invalid" in cmd.data["failure"]["message"]


@workflow.defn
async def bad_activity_args() -> None:
    await workflow.execute_activity(make_point, "not a box", "extra", start_to_close_timeout=T)


def test_wrong_activity_arguments_are_refused_before_scheduling():
    (cmd,) = Driver(bad_activity_args).activate()
    assert cmd.type == h.WORKFLOW_FAILED
    assert cmd.data["failure"]["message"] == "activity make_point takes 1 argument(s), got 2"


@pytest.mark.parametrize("value", [0, -1, timedelta(0)])
def test_non_positive_timeouts_are_refused(value):
    @workflow.defn(name="bad_timeout")
    async def bad_timeout() -> None:
        await workflow.execute_activity("x", start_to_close_timeout=value)

    (cmd,) = Driver(bad_timeout).activate()
    assert cmd.data["failure"]["type"] == "InputValidationError"
    assert "timeouts must be positive" in cmd.data["failure"]["message"]


@workflow.defn
async def task_group() -> list[Any]:
    async with asyncio.TaskGroup() as tg:
        a = tg.create_task(workflow.execute_activity("a", start_to_close_timeout=T))
        b = tg.create_task(workflow.execute_activity("b", start_to_close_timeout=T))
    return [a.result(), b.result()]


def test_task_group_collects_results():
    d = Driver(task_group)
    assert [scheduled(c) for c in d.activate()] == ["a", "b"]
    d.activate(completed(4, "B"), completed(3, "A"), after=1)
    assert d.result == ["A", "B"]


def test_task_group_failure_cancels_the_sibling_activity():
    d = Driver(task_group)
    d.activate()
    cmds = d.activate(failed(3, "Boom", "x"), after=1)
    assert kinds(cmds) == [(7, h.ACTIVITY_CANCEL_REQUESTED), (8, h.WORKFLOW_FAILED)]
    assert cmds[0].data == {"activity_seq": 4}
    assert cmds[1].data["failure"]["type"] == "ExceptionGroup"
    assert "ActivityError: activity a (seq 3) failed: Boom: x" in cmds[1].data["failure"]["stack"]


@workflow.defn
async def producer_consumer() -> list[str]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    finished = asyncio.Event()

    async def produce() -> None:
        for i in range(3):
            await queue.put(await workflow.execute_activity("produce", i, start_to_close_timeout=T))
        finished.set()

    task = asyncio.create_task(produce())
    out = [await queue.get() for _ in range(3)]
    await finished.wait()
    await task
    return out


def test_asyncio_queue_and_event_work_between_workflow_tasks():
    d = Driver(producer_consumer)
    (first,) = d.activate()
    assert (first.seq, first.data["input"]) == (3, [0])
    (second,) = d.activate(completed(3, "r0"), after=1)
    assert (second.seq, second.data["input"]) == (6, [1])
    (third,) = d.activate(completed(6, "r1"), after=1)
    assert (third.seq, third.data["input"]) == (9, [2])
    d.activate(completed(9, "r2"), after=1)
    assert d.result == ["r0", "r1", "r2"]
    assert replay(d.definition, d.info, d.history).closed
