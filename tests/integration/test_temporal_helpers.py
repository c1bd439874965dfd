"""Temporal's names and semantics that its samples rely on: ``workflow.wait`` (a
deterministic ``asyncio.wait``), ``workflow.info().get_current_history_length()`` /
``is_continue_as_new_suggested()``, and client errors chained to their cause
(``e.__cause__``), as the message_passing samples print them."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from cairn import ApplicationError, WorkflowFailure, WorkflowUpdateFailedError, activity, testing, workflow
from cairn.engine import history as h

T = 30


@activity.defn
async def pause(seconds: float, label: str) -> str:
    await asyncio.sleep(seconds)
    return label


@activity.defn
async def broken() -> None:
    raise ApplicationError("broken on purpose", non_retryable=True)


@workflow.defn
class Racer:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        slow = asyncio.create_task(workflow.execute_activity(pause, 5.0, "slow", start_to_close_timeout=T))
        fast = asyncio.create_task(workflow.execute_activity(pause, 0.05, "fast", start_to_close_timeout=T))
        done, pending = await workflow.wait([slow, fast], return_when=asyncio.FIRST_COMPLETED)
        out["first"] = ([f.result() for f in done], [f is slow for f in pending])
        # A coroutine is wrapped in a task; FIRST_EXCEPTION returns at the failure.
        failing = workflow.execute_activity(broken, start_to_close_timeout=T)
        done, pending = await workflow.wait([slow, failing], return_when=asyncio.FIRST_EXCEPTION)
        out["exception"] = ([type(f.exception()).__name__ for f in done], [f is slow for f in pending])
        # The timeout is a durable timer; nothing is cancelled when it passes.
        done, pending = await workflow.wait([slow], timeout=timedelta(seconds=0.1))
        out["timeout"] = (len(done), len(pending), slow.cancelled())
        done, pending = await workflow.wait([slow])  # ALL_COMPLETED
        out["all"] = ([f.result() for f in done], pending)
        info = workflow.info()
        out["length"] = (info.get_current_history_length(), info.history_length,
                         info.is_continue_as_new_suggested())
        return out


async def test_workflow_wait_is_asyncio_wait_with_ordered_lists_and_replays(client, start_worker):
    await start_worker(workflows=[Racer], activities=[pause, broken])
    handle = await client.start(Racer.run, id="racer")
    out = await handle.result(timeout=T)
    assert out["first"] == [["fast"], [True]]
    assert out["exception"] == [["ActivityError"], [True]]
    assert out["timeout"] == [0, 1, False]
    assert out["all"] == [["slow"], []]
    length, same, suggested = out["length"]
    assert length == same > 0
    assert suggested is False
    recorded = await handle.history()
    assert [e.type for e in recorded].count("TimerStarted") == 1
    assert testing.replay_history([Racer], recorded).events == len(recorded)


@workflow.defn
async def empty_wait() -> str:
    try:
        await workflow.wait([])
    except ValueError as e:
        return str(e)
    return "no error"


@workflow.defn
async def suggestion() -> list[Any]:
    info = workflow.info()
    return [info.get_current_history_length(), info.is_continue_as_new_suggested()]


async def test_empty_wait_raises_and_the_suggestion_follows_the_warning_mark(client, start_worker, monkeypatch):
    await start_worker(workflows=[empty_wait, suggestion])
    assert "at least one" in await client.execute(empty_wait, id="empty-wait", result_timeout=T)
    monkeypatch.setattr(h, "WARN_HISTORY_EVENTS", 1)  # CAIRN_WARN_HISTORY_EVENTS=1 in this process
    length, suggested = await client.execute(suggestion, id="suggested", result_timeout=T)
    assert length > 1
    assert suggested is True


@workflow.defn
class Failing:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False, timeout=0.2)

    @workflow.update
    def refuse(self) -> None:
        raise ApplicationError("not now", type="Refused")


async def test_client_errors_are_chained_to_their_cause(client, start_worker):
    await start_worker(workflows=[Failing])
    handle = await client.start(Failing.run, id="failing")
    with pytest.raises(WorkflowUpdateFailedError) as update_error:
        await handle.execute_update(Failing.refuse)
    cause = update_error.value.__cause__
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.message) == ("Refused", "not now")
    assert update_error.value.cause is cause
    with pytest.raises(WorkflowFailure) as run_error:
        await handle.result(timeout=T)
    cause = run_error.value.__cause__
    assert isinstance(cause, ApplicationError)
    assert cause.type == run_error.value.type == "TimeoutError"
