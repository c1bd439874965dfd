"""Cancelling and terminating runs."""

from __future__ import annotations

import asyncio

import pytest

from cairn import CairnError, WorkflowCancelled, WorkflowTerminated, activity, workflow
from support import events, run_status, types_of, wait_until

_cleanups: list[str] = []
_long_state: dict[str, list[str]] = {}
_release = asyncio.Event()


@activity.defn
async def cleanup(reason: str) -> str:
    _cleanups.append(reason)
    return f"cleaned up after {reason}"


@activity.defn
async def long_job(tag: str) -> str:
    _long_state.setdefault(tag, []).append("started")
    try:
        await asyncio.wait_for(_release.wait(), 15)
    except asyncio.CancelledError:
        _long_state[tag].append("cancelled")
        raise
    return "done"


@workflow.defn
async def nap_forever() -> str:
    await workflow.sleep(3600)
    return "woke"


@workflow.defn
async def careful(mode: str) -> str:
    try:
        await workflow.sleep(3600)
    except asyncio.CancelledError:
        await workflow.execute_activity(cleanup, mode, start_to_close_timeout=10)
        if mode == "reraise":
            raise
        return "cleaned and completed"
    return "woke"


@workflow.defn
async def busy(tag: str) -> str:
    job = workflow.start_activity(long_job, tag, start_to_close_timeout=60)
    await asyncio.gather(job, workflow.sleep(3600))
    return "unreachable"


def _leftovers(sql, run_id: str) -> dict[str, int]:
    return {t: sql(f"SELECT count(*) FROM cairn.{t} WHERE run_id = %s", (run_id,))[0][0]
            for t in ("workflow_tasks", "activity_tasks", "timers", "inbox")}


async def _wait_for_event(sql, run_id: str, event_type: str) -> None:
    await wait_until(lambda: event_type in types_of(sql, run_id), timeout=10, what=event_type)


async def test_cancel_a_sleeping_workflow(client, start_worker, sql):
    await start_worker(workflows=[nap_forever])
    handle = await client.start(nap_forever, id="cancel-1")
    await _wait_for_event(sql, handle.run_id, "TimerStarted")
    assert sql("SELECT count(*) FROM cairn.timers") == [(1,)]
    await handle.cancel("user asked")
    with pytest.raises(WorkflowCancelled):
        await handle.result(timeout=20)
    assert run_status(sql, handle.run_id) == "cancelled"
    types = types_of(sql, handle.run_id)
    assert types[-4:] == ["WorkflowTaskStarted", "CancelRequested", "TimerCancelled", "WorkflowCancelled"]
    req = next(d for _, t, d in events(sql, handle.run_id) if t == "CancelRequested")
    assert req["reason"] == "user asked"
    assert _leftovers(sql, handle.run_id) == dict.fromkeys(_leftovers(sql, handle.run_id), 0)
    assert (await handle.describe()).status == "cancelled"
    # A closed run cannot be cancelled or terminated again.
    with pytest.raises(CairnError, match="is closed"):
        await handle.cancel()
    with pytest.raises(CairnError, match="is closed"):
        await handle.terminate()


@pytest.mark.parametrize("mode", ["reraise", "swallow"])
async def test_cancel_runs_cleanup_activity(client, start_worker, sql, mode):
    await start_worker(workflows=[careful], activities=[cleanup])
    handle = await client.start(careful, mode, id=f"careful-{mode}")
    await _wait_for_event(sql, handle.run_id, "TimerStarted")
    await handle.cancel()
    if mode == "reraise":
        with pytest.raises(WorkflowCancelled):
            await handle.result(timeout=20)
        assert run_status(sql, handle.run_id) == "cancelled"
    else:
        assert await handle.result(timeout=20) == "cleaned and completed"
        assert run_status(sql, handle.run_id) == "completed"
    assert _cleanups.count(mode) == 1
    types = types_of(sql, handle.run_id)
    i = types.index("CancelRequested")
    after = [t for t in types[i:] if t != "WorkflowTaskStarted"]
    assert after == ["CancelRequested", "TimerCancelled", "ActivityScheduled", "ActivityCompleted",
                     "WorkflowCancelled" if mode == "reraise" else "WorkflowCompleted"]
    completed = next(d for _, t, d in events(sql, handle.run_id) if t == "ActivityCompleted")
    assert completed["result"] == f"cleaned up after {mode}"


async def test_terminate(client, start_worker, sql):
    _release.clear()
    try:
        await start_worker(workflows=[busy], activities=[long_job])
        handle = await client.start(busy, "term", id="terminate-1")
        await _wait_for_event(sql, handle.run_id, "TimerStarted")
        await wait_until(lambda: _long_state.get("term") == ["started"], what="the activity to start")
        before = events(sql, handle.run_id)

        await handle.terminate("operator said so")

        assert run_status(sql, handle.run_id) == "terminated"
        after = events(sql, handle.run_id)
        assert after[:-1] == before  # nothing but the one terminal event was added
        last_seq, last_type, last_data = after[-1]
        assert (last_seq, last_type) == (before[-1][0] + 1, "WorkflowTerminated")
        assert last_data == {"reason": "operator said so"}
        failure = sql("SELECT failure FROM cairn.runs WHERE run_id = %s", (handle.run_id,))[0][0]
        assert failure == {"type": "WorkflowTerminated", "message": "operator said so"}
        assert _leftovers(sql, handle.run_id) == dict.fromkeys(_leftovers(sql, handle.run_id), 0)
        with pytest.raises(WorkflowTerminated, match="operator said so"):
            await handle.result(timeout=5)

        # The running attempt is told to stop; its late outcome is not recorded.
        await wait_until(lambda: _long_state["term"] == ["started", "cancelled"], timeout=6,
                         what="the running attempt to be cancelled")
        assert events(sql, handle.run_id) == after
        with pytest.raises(CairnError, match="is closed"):
            await handle.terminate()
    finally:
        _release.set()


async def test_terminate_a_run_no_worker_has_picked_up(client, sql):
    handle = await client.start(nap_forever, id="terminate-unclaimed")
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(1,)]
    await handle.terminate()
    assert run_status(sql, handle.run_id) == "terminated"
    assert types_of(sql, handle.run_id) == ["WorkflowStarted", "WorkflowTerminated"]
    assert _leftovers(sql, handle.run_id) == dict.fromkeys(_leftovers(sql, handle.run_id), 0)
    with pytest.raises(WorkflowTerminated):
        await handle.result(timeout=5)
