"""Workflows for the updates acceptance test (served by a ``cairn worker`` subprocess)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cairn import ApplicationError, activity, workflow

HOLD_SECONDS = 600.0  # the first attempt of `book` blocks this long: the test kills its worker meanwhile


@activity.defn
def book(amount: int) -> int:
    """Books a deposit; its first attempt hangs (until its worker is killed)."""
    if activity.info().attempt == 1:
        time.sleep(HOLD_SECONDS)
    return amount


@workflow.defn
async def ledger(balance: int) -> dict[str, Any]:
    """Update "deposit" (async: runs `book`), validated (positive amounts); "close" ends the
    run once every handler has finished; "balance" is a query."""
    state: dict[str, Any] = {"balance": balance, "closed": False}

    async def deposit(amount: int) -> int:
        booked = await workflow.execute_activity(book, amount, start_to_close_timeout=timedelta(seconds=900))
        state["balance"] += booked
        return int(state["balance"])

    def positive(amount: int) -> None:
        if amount <= 0:
            raise ApplicationError("deposits must be positive", type="BadAmount")

    def close() -> int:
        state["closed"] = True
        return int(state["balance"])

    workflow.set_update_handler("deposit", deposit, validator=positive)
    workflow.set_update_handler("close", close)
    workflow.set_query_handler("balance", lambda: state["balance"])
    await workflow.wait_condition(lambda: state["closed"])
    await workflow.wait_condition(workflow.all_handlers_finished)
    return state


@dataclass
class Deposit:
    amount: int
    memo: str


@workflow.defn
class Ledger:
    """`ledger` as a class (Temporal's form): typed handlers with several arguments, a
    validator, a query, and a signal the handler method types."""

    @workflow.init
    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.memos: list[str] = []
        self.closed = False

    @workflow.run
    async def run(self, balance: int) -> dict[str, Any]:
        await workflow.wait_condition(lambda: self.closed)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return {"balance": self.balance, "memos": self.memos}

    @workflow.update
    async def deposit(self, deposit: Deposit, times: int) -> int:
        for _ in range(times):
            self.balance += await workflow.execute_activity(book, deposit.amount,
                                                            start_to_close_timeout=timedelta(seconds=900))
        self.memos.append(deposit.memo)
        return self.balance

    @deposit.validator
    def positive(self, deposit: Deposit, times: int) -> None:
        if deposit.amount <= 0 or times <= 0:
            raise ApplicationError("deposits must be positive", type="BadAmount")

    @workflow.signal
    def note(self, memo: str, repeat: int) -> None:
        self.memos.extend([memo] * repeat)

    @workflow.query
    def get_balance(self) -> int:
        return self.balance

    @workflow.update
    def close(self) -> int:
        self.closed = True
        return self.balance
