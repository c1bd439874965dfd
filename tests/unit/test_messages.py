"""Signals, wait conditions and queries on the deterministic loop, driven by hand."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cairn import CairnError, DeterminismViolation, QueryFailed, workflow
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.errors import WorkflowTaskFailed
from cairn.views import summarize

from .harness import Driver, completed, fired, kinds

T = 30


def signal(name: str, payload: Any = None) -> tuple[str, dict[str, Any]]:
    return h.SIGNAL_RECEIVED, {"name": name, "payload": payload}


def result_of(d: Driver) -> Any:
    return d.result


# -- wait_signal: buffering, order, one consumer per signal


@workflow.defn
async def collect_three() -> list[Any]:
    return [await workflow.wait_signal("item") for _ in range(3)]


def test_signals_before_the_wait_are_buffered_in_arrival_order():
    d = Driver(collect_three)
    # All three arrive in the first batch, before the code has waited at all.
    d.activate(signal("item", 1), signal("other", "x"), signal("item", 2), signal("item", 3))
    assert d.result == [1, 2, 3]


def test_signals_across_batches_wake_the_waiter():
    d = Driver(collect_three)
    assert d.activate() == []
    assert d.activate(signal("item", "a")) == []
    assert d.activate(signal("item", "b"), signal("item", "c"))[-1].type == h.WORKFLOW_COMPLETED
    assert d.result == ["a", "b", "c"]


@workflow.defn
async def two_waiters() -> list[Any]:
    first = asyncio.ensure_future(workflow.wait_signal("go"))
    second = asyncio.ensure_future(workflow.wait_signal("go"))
    return [await first, await second]


def test_each_signal_is_consumed_by_exactly_one_wait_in_wait_order():
    d = Driver(two_waiters)
    d.activate()
    d.activate(signal("go", "one"))
    assert not d.instance.closed
    d.activate(signal("go", "two"))
    assert d.result == ["one", "two"]


@workflow.defn
async def wait_with_timeout(seconds: float) -> Any:
    try:
        return await workflow.wait_signal("answer", timeout=seconds)
    except TimeoutError:
        return "timed out"


def test_wait_signal_timeout_is_a_durable_timer():
    d = Driver(wait_with_timeout, 5.0)
    commands = d.activate()
    assert kinds(commands) == [(3, h.TIMER_STARTED)]
    assert commands[0].data["duration"] == 5.0
    d.activate(fired(3), after=5)
    assert d.result == "timed out"


def test_a_signal_before_the_timeout_cancels_the_timer():
    d = Driver(wait_with_timeout, 5.0)
    d.activate()
    commands = d.activate(signal("answer", {"ok": True}), after=1)
    assert [(c.type, c.data.get("timer_seq")) for c in commands] == [
        (h.TIMER_CANCELLED, 3), (h.WORKFLOW_COMPLETED, None)]
    assert d.result == {"ok": True}


@workflow.defn
async def timeout_then_wait_again() -> list[Any]:
    out: list[Any] = []
    try:
        out.append(await workflow.wait_signal("s", timeout=5))
    except TimeoutError:
        out.append("timeout")
    out.append(await workflow.wait_signal("s"))
    return out


def test_a_signal_in_the_same_batch_as_the_timeout_is_not_lost():
    """The timer fires first in the batch: the wait times out, and the signal stays
    buffered for the next wait instead of vanishing with the cancelled one."""
    d = Driver(timeout_then_wait_again)
    d.activate()
    d.activate(fired(3), signal("s", "kept"), after=5)
    assert d.result == ["timeout", "kept"]


@workflow.defn
async def buffered_then_timeout() -> Any:
    await workflow.wait_signal("first")
    return await workflow.wait_signal("second", timeout=5)


def test_a_buffered_signal_is_taken_without_starting_a_timer():
    d = Driver(buffered_then_timeout)
    assert [c.type for c in d.activate(signal("second", 2), signal("first", 1))] == [h.WORKFLOW_COMPLETED]
    assert d.result == 2


# -- handlers


@workflow.defn
async def with_handlers() -> dict[str, Any]:
    seen: list[Any] = []
    slow: list[Any] = []

    async def on_slow(payload: Any) -> None:
        slow.append(await workflow.execute_activity("work", payload, start_to_close_timeout=T))

    workflow.set_signal_handler("add", seen.append)
    workflow.set_signal_handler("slow", on_slow)
    waited = await workflow.wait_signal("done")
    await workflow.wait_condition(lambda: len(slow) == 1)
    return {"seen": seen, "slow": slow, "waited": waited}


def test_a_handled_signal_goes_to_its_handler_others_to_wait_signal():
    d = Driver(with_handlers)
    d.activate()
    commands = d.activate(signal("add", 1), signal("slow", "job"), signal("add", 2))
    # The async handler awaits an activity; the sync one ran for each signal.
    assert [(c.type, c.data.get("activity_type")) for c in commands] == [(h.ACTIVITY_SCHEDULED, "work")]
    seq = commands[0].seq
    assert d.activate(signal("done", "bye")) == []
    d.activate(completed(seq, "worked"))
    assert d.result == {"seen": [1, 2], "slow": ["worked"], "waited": "bye"}


@workflow.defn
async def late_handler() -> list[Any]:
    seen: list[Any] = []
    await workflow.wait_signal("register")
    workflow.set_signal_handler("item", seen.append)
    await workflow.wait_condition(lambda: len(seen) >= 3)
    return seen


def test_a_handler_registered_late_receives_the_buffered_signals_in_order():
    d = Driver(late_handler)
    d.activate(signal("item", "a"), signal("item", "b"))
    assert not d.instance.closed
    d.activate(signal("register"), signal("item", "c"))
    assert d.result == ["a", "b", "c"]


@workflow.defn
async def handler_raises() -> str:
    def on_bad(payload: Any) -> None:
        raise ValueError(f"bad payload {payload}")

    workflow.set_signal_handler("bad", on_bad)
    await workflow.sleep(3600)
    return "unreachable"


def test_an_exception_in_a_signal_handler_fails_the_run():
    d = Driver(handler_raises)
    d.activate()
    commands = d.activate(signal("bad", 7))
    assert commands[-1].type == h.WORKFLOW_FAILED
    assert (commands[-1].data["failure"]["type"], commands[-1].data["failure"]["message"]) == (
        "ValueError", "bad payload 7")


@workflow.defn
async def handler_has_a_bug() -> str:
    workflow.set_signal_handler("bad", lambda payload: payload.no_such_attribute)
    await workflow.sleep(3600)
    return "unreachable"


def test_a_bug_in_a_signal_handler_fails_the_task_not_the_run():
    d = Driver(handler_has_a_bug)
    d.activate()
    with pytest.raises(WorkflowTaskFailed) as info:
        d.activate(signal("bad", 1))
    assert isinstance(info.value.cause, AttributeError)


# -- wait_condition


@workflow.defn
async def approval() -> list[str]:
    state = {"approved": False, "log": []}

    def approve(who: Any) -> None:
        state["approved"] = True

    workflow.set_signal_handler("approve", approve)

    async def watcher(tag: str) -> None:
        await workflow.wait_condition(lambda: state["approved"])
        state["log"].append(tag)

    await asyncio.gather(watcher("first"), watcher("second"), watcher("third"))
    return state["log"]


def test_wait_condition_is_woken_by_a_handler_and_resolves_in_registration_order():
    d = Driver(approval)
    assert d.activate() == []
    assert d.activate(signal("other")) == []
    d.activate(signal("approve", "ann"))
    assert d.result == ["first", "second", "third"]


@workflow.defn
async def chained_conditions() -> list[int]:
    state = {"n": 0}
    order: list[int] = []

    async def step(k: int) -> None:
        await workflow.wait_condition(lambda: state["n"] >= k)
        order.append(k)
        state["n"] += 1

    workflow.set_signal_handler("kick", lambda _: state.__setitem__("n", 1))
    await asyncio.gather(*(step(k) for k in (3, 1, 2, 4)))
    return order


def test_conditions_are_rechecked_until_nothing_changes():
    """One signal sets n = 1; each resolved condition raises n, waking the next one in
    the same activation."""
    d = Driver(chained_conditions)
    d.activate()
    d.activate(signal("kick"))
    assert d.result == [1, 2, 3, 4]


@workflow.defn
async def condition_with_timeout() -> str:
    try:
        await workflow.wait_condition(lambda: False, timeout=10)
    except TimeoutError:
        return "gave up"
    return "unreachable"


def test_wait_condition_timeout():
    d = Driver(condition_with_timeout)
    commands = d.activate()
    assert [(c.type, c.data.get("duration")) for c in commands] == [(h.TIMER_STARTED, 10)]
    d.activate(fired(commands[0].seq), after=10)
    assert d.result == "gave up"


@workflow.defn
async def condition_true_at_once() -> str:
    await workflow.wait_condition(lambda: True, timeout=10)
    return "no timer"


def test_a_condition_already_true_returns_without_a_timer():
    d = Driver(condition_true_at_once)
    assert [c.type for c in d.activate()] == [h.WORKFLOW_COMPLETED]


@pytest.mark.parametrize("call", [
    lambda: workflow.wait_signal(""),
    lambda: workflow.wait_signal("x" * 201),
    lambda: workflow.wait_signal("s", timeout=0),
    lambda: workflow.wait_condition(True),  # type: ignore[arg-type]
    lambda: asyncio.sleep(0, workflow.set_query_handler("q", _async_query)),  # type: ignore[func-returns-value]
    lambda: asyncio.sleep(0, workflow.set_signal_handler("s", 42)),  # type: ignore[func-returns-value,arg-type]
])
def test_bad_arguments_fail_with_a_clear_error(call):
    @workflow.defn
    async def bad() -> None:
        await call()

    d = Driver(bad)
    d.activate()
    assert d.history[-1].type == h.WORKFLOW_FAILED
    assert d.history[-1].data["failure"]["type"] == "InputValidationError"


async def _async_query() -> int:
    return 1


def test_message_helpers_work_only_inside_workflow_code():
    with pytest.raises(CairnError, match="only inside workflow code"):
        workflow.set_query_handler("q", lambda: None)


# -- queries


@workflow.defn
async def counter() -> int:
    state = {"count": 0}
    workflow.set_signal_handler("inc", lambda by: state.__setitem__("count", state["count"] + by))
    workflow.set_query_handler("count", lambda: state["count"])
    workflow.set_query_handler("plus", lambda a, b: state["count"] + a + b)
    workflow.set_query_handler("boom", lambda: 1 / 0)
    workflow.set_query_handler("schedule", lambda: workflow.start_activity("work", start_to_close_timeout=T))
    workflow.set_query_handler("sleep", lambda: asyncio.ensure_future(asyncio.sleep(5)))
    await workflow.wait_condition(lambda: state["count"] >= 10)
    return state["count"]


def test_query_reads_the_current_state():
    d = Driver(counter)
    d.activate(signal("inc", 2))
    assert d.instance.messages.query("count", []) == 2
    assert d.instance.messages.query("plus", [1, 2]) == 5
    d.activate(signal("inc", 3))
    assert d.instance.messages.query("count", []) == 5


def test_unknown_query_lists_the_known_names():
    d = Driver(counter)
    d.activate()
    with pytest.raises(QueryFailed) as info:
        d.instance.messages.query("nope", [])
    assert info.value.type == "UnknownQuery"
    assert "known: boom, count, plus, schedule, sleep" in str(info.value)


def test_a_query_that_raises_reports_its_exception():
    d = Driver(counter)
    d.activate()
    with pytest.raises(ZeroDivisionError):
        d.instance.messages.query("boom", [])


def test_a_query_that_records_a_command_fails_and_records_nothing():
    d = Driver(counter)
    d.activate()
    before = (d.instance.last_seq, list(d.instance._commands))
    with pytest.raises(DeterminismViolation, match=r"read-only.*ActivityScheduled"):
        d.instance.messages.query("schedule", [])
    with pytest.raises(QueryFailed, match="scheduled work"):
        d.instance.messages.query("sleep", [])
    assert (d.instance.last_seq, list(d.instance._commands)) == before
    # The run carries on as if nothing happened: no timer, no activity in its commands.
    commands = d.activate(signal("inc", 10))
    assert [c.type for c in commands] == [h.WORKFLOW_COMPLETED]
    assert d.result == 10


def test_query_on_a_replayed_closed_run():
    d = Driver(counter)
    d.activate(signal("inc", 4))
    d.activate(signal("inc", 7))
    assert d.result == 11
    inst = replay(d.definition, d.info, d.history)
    assert inst.closed
    assert inst.messages.query("count", []) == 11


# -- replay of signals


def test_signal_driven_history_replays():
    d = Driver(with_handlers)
    d.activate()
    seq = d.activate(signal("add", 1), signal("slow", "job"))[0].seq
    d.activate(signal("done", "bye"), completed(seq, "worked"))
    assert d.result == {"seen": [1], "slow": ["worked"], "waited": "bye"}
    assert replay(d.definition, d.info, d.history).closed


def test_signal_summary():
    e = Event(5, h.SIGNAL_RECEIVED, {"name": "approve", "payload": {"by": "ann"}})
    assert summarize(e) == 'signal approve payload={"by": "ann"}'
    assert h.SIGNAL_RECEIVED in h.INPUT_EVENTS
