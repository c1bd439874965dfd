"""Workflow updates in the engine: validation before anything is recorded (admit_updates),
UpdateAccepted delivered to the handler, UpdateCompleted with its result or failure, async
handlers that wait on timers, all_handlers_finished, and replay of a recorded history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from cairn import ApplicationError, workflow
from cairn.engine import history as h
from cairn.engine.instance import replay
from cairn.engine.signals import admit_updates
from cairn.errors import NonDeterminismError

from .harness import Driver, fired, kinds


@workflow.defn
async def account(balance: int) -> int:
    state = {"balance": balance, "closing": False}

    def withdraw(amount: int) -> int:
        state["balance"] -= amount
        return state["balance"]

    def enough(amount: int) -> None:
        if amount > state["balance"]:
            raise ApplicationError(f"only {state['balance']} left", type="Insufficient")

    async def slow_deposit(amount: int) -> int:
        await workflow.sleep(5)
        state["balance"] += amount
        return state["balance"]

    def close() -> None:
        state["closing"] = True

    def broken() -> None:
        raise ValueError("bad")

    workflow.set_update_handler("withdraw", withdraw, validator=enough)
    workflow.set_update_handler("slow_deposit", slow_deposit)
    workflow.set_update_handler("close", close)
    workflow.set_update_handler("broken", broken)
    await workflow.wait_condition(lambda: state["closing"])
    await workflow.wait_condition(workflow.all_handlers_finished)
    return state["balance"]


def requested(inbox_id: int, update_id: str, name: str, *args: Any) -> tuple[int, str, dict[str, Any]]:
    return inbox_id, h.UPDATE_REQUESTED, {"update_id": update_id, "name": name, "args": list(args)}


def accepted(update_id: str, name: str, *args: Any) -> tuple[str, dict[str, Any]]:
    return h.UPDATE_ACCEPTED, {"update_id": update_id, "name": name, "args": list(args)}


def test_a_new_run_defers_its_update_requests_until_its_code_has_started():
    d = Driver(account, 10)
    admitted = admit_updates(d.instance, [requested(1, "u1", "withdraw", 3), (2, h.SIGNAL_RECEIVED, {"name": "x"})])
    assert admitted.inbox == [(2, h.SIGNAL_RECEIVED, {"name": "x"})]
    assert admitted.consumed == [2]  # the update request stays in the inbox
    assert admitted.rejected == []


def test_validator_rejects_before_anything_is_recorded_and_accepts_the_rest():
    d = Driver(account, 10)
    d.activate()
    inbox = [requested(1, "u1", "withdraw", 30), requested(2, "u2", "withdraw", 3), requested(3, "u3", "nope"),
             requested(4, "u4", "withdraw", 1, 2)]
    admitted = admit_updates(d.instance, inbox)
    assert admitted.consumed == [1, 2, 3, 4]
    assert admitted.inbox == [(2, h.UPDATE_ACCEPTED, {"update_id": "u2", "name": "withdraw", "args": [3]})]
    assert [(r["update_id"], r["failure"]["type"]) for r in admitted.rejected] == [
        ("u1", "Insufficient"), ("u3", "UnknownUpdate"), ("u4", "InvalidArguments")]
    assert admitted.rejected[0]["failure"]["message"] == "only 10 left"
    # The validator ran read-only: the state is unchanged, nothing was recorded.
    commands = d.activate(accepted("u2", "withdraw", 3))
    assert [(c.type, c.data) for c in commands] == [(h.UPDATE_COMPLETED, {"update_id": "u2", "result": 7})]


def test_a_validator_that_changes_the_workflow_rejects_the_update():
    @workflow.defn
    async def sneaky() -> None:
        workflow.set_update_handler("u", lambda: None, validator=lambda: workflow.start_activity(
            "act", start_to_close_timeout=1))
        await workflow.wait_condition(lambda: False)

    d = Driver(sneaky)
    d.activate()
    admitted = admit_updates(d.instance, [requested(1, "x", "u")])
    assert admitted.inbox == []
    assert admitted.rejected[0]["failure"]["type"] in ("DeterminismViolation", "InputValidationError")


def test_handler_failure_is_the_updates_not_the_runs_and_async_handlers_wait():
    d = Driver(account, 10)
    d.activate()
    commands = d.activate(accepted("b", "broken"), accepted("s", "slow_deposit", 5))
    assert kinds(commands) == [(6, h.UPDATE_COMPLETED), (7, h.TIMER_STARTED)]
    assert commands[0].data["failure"]["type"] == "ValueError"
    assert not d.instance.closed
    # close while the slow handler waits: the run waits for all handlers to finish
    commands = d.activate(accepted("c", "close"))
    assert [c.type for c in commands] == [h.UPDATE_COMPLETED]
    commands = d.activate(fired(7), after=5)
    assert [(c.type, c.data.get("result")) for c in commands] == [
        (h.UPDATE_COMPLETED, 15), (h.WORKFLOW_COMPLETED, 15)]
    assert d.result == 15


def test_a_recorded_update_history_replays_and_a_changed_result_diverges():
    d = Driver(account, 10)
    d.activate()
    d.activate(accepted("w", "withdraw", 4))
    d.activate(accepted("c", "close"))
    assert d.result == 6
    inst = replay(d.definition, d.info, d.history)
    assert inst.closed
    changed = [e if e.type != h.UPDATE_COMPLETED or e.data["update_id"] != "w"
               else h.Event(e.seq, e.type, {"update_id": "other", "result": 6}) for e in d.history]
    with pytest.raises(NonDeterminismError):
        replay(d.definition, d.info, changed)


@dataclass
class Item:
    sku: str
    quantity: int


@workflow.defn
async def typed_cart() -> list[Any]:
    items: list[Item] = []

    def add(item: Item, note: str = "") -> int:
        items.append(item)
        return len(items)

    def valid(item: Item, note: str = "") -> None:
        if not isinstance(item, Item) or item.quantity <= 0:
            raise ApplicationError("bad quantity", type="BadQuantity")

    workflow.set_update_handler("add", add, validator=valid)
    await workflow.wait_condition(lambda: len(items) >= 2)
    return [(i.sku, i.quantity) for i in items]


def test_update_arguments_are_typed_by_the_handlers_annotations():
    d = Driver(typed_cart)
    d.activate()
    inbox = [requested(1, "a", "add", {"sku": "x", "quantity": 1}),
             requested(2, "b", "add", {"sku": "y", "quantity": 0}),
             requested(3, "c", "add", {"sku": "z"}),
             requested(4, "d", "add", {"sku": "w", "quantity": 2}, "gift", "extra")]
    admitted = admit_updates(d.instance, inbox)
    assert [r[2]["update_id"] for r in admitted.inbox] == ["a"]
    assert [(r["update_id"], r["failure"]["type"]) for r in admitted.rejected] == [
        ("b", "BadQuantity"), ("c", "InvalidArguments"), ("d", "InvalidArguments")]
    commands = d.activate(accepted("a", "add", {"sku": "x", "quantity": 1}),
                          accepted("e", "add", {"sku": "v", "quantity": 3}, "gift"))
    assert [c.data.get("result") for c in commands] == [1, 2, [["x", 1], ["v", 3]]]
