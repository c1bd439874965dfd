"""handle.result() wakes up as soon as the run closes (LISTEN cairn_closed), including when
the close lands while result() is reading the run's status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from cairn import Client, WorkflowFailure, WorkflowTerminated, activity, workflow
from support import wait_until


@workflow.defn
async def idle() -> None:
    await workflow.sleep(3600)


async def test_result_returns_promptly_after_close(client, start_worker):
    handle = await client.start(idle, id="wake-1")  # no worker for it: stays open

    async def terminate_soon() -> None:
        await asyncio.sleep(0.3)
        await client.get_handle("wake-1").terminate("done waiting")

    t0 = time.monotonic()
    task = asyncio.create_task(terminate_soon())
    with pytest.raises(WorkflowTerminated):
        await handle.result(timeout=10)
    await task
    assert time.monotonic() - t0 < 3.0  # the NOTIFY woke it, not the 5 s re-check


async def test_close_during_status_check_is_not_missed(client, db_url):
    """Deterministic form of a lost wake-up: the run closes (and its NOTIFY reaches the
    client's listener) after result() read "running" but before it registered its waiter.
    result() must still return at once, not after its 5 s fallback re-check (or its timeout)."""
    handle = await client.start(idle, id="wake-2")  # no worker: stays open
    original = handle._outcome_row
    closed = False
    workflow_id, run_id = handle.workflow_id, handle.run_id

    async def read_then_close(run: str, **kw: Any) -> dict[str, Any]:
        nonlocal closed
        row = await original(run, **kw)
        row["run_id"] = run_id
        if not closed:
            closed = True
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as spy:
                await spy.execute("LISTEN cairn_closed")
                other = await Client.connect(db_url)
                try:
                    await other.get_handle(workflow_id).terminate("closed mid-check")
                finally:
                    await other.close()
                async for note in spy.notifies(timeout=5):
                    if note.payload == row["run_id"]:
                        break
                else:
                    raise AssertionError("no cairn_closed notification within 5 s")
            # The client's listener has the same notification by now; let it run.
            for _ in range(20):
                await asyncio.sleep(0.005)
        return row

    handle._outcome_row = read_then_close  # type: ignore[method-assign]
    t0 = time.monotonic()
    with pytest.raises(WorkflowTerminated):
        await handle.result(timeout=3)
    elapsed = time.monotonic() - t0
    assert closed
    assert elapsed < 2.0, f"result() took {elapsed:.1f} s: the close notification was lost"


@activity.defn
async def echo(text: str) -> str:
    return text


@workflow.defn
async def echoed(text: str, fail: bool) -> str:
    out = await workflow.execute_activity(echo, text, start_to_close_timeout=30)
    if fail:
        raise ValueError(out[:20])
    return out


def _count_reads(handle: Any) -> list[int]:
    """Counts the run reads of handle.result() (one list item per read)."""
    reads: list[int] = []
    original = handle._outcome_row

    async def counted(run: str, **kw: Any) -> dict[str, Any]:
        reads.append(1)
        return await original(run, **kw)

    handle._outcome_row = counted
    return reads


@pytest.mark.parametrize(("size", "closed_first", "reads"), [
    (10, False, 0), (20_000, False, 1),  # waiting: over the payload limit (8,000 bytes), read
    (10, True, 0), (2_000, True, 1),  # closed before result(): kept only up to WATCHED_OUTCOME_BYTES
])
async def test_result_takes_the_outcome_from_the_close_notify(client, start_worker, size, closed_first, reads):
    """A small outcome rides with the close NOTIFY and result() reads nothing, whether it
    was waiting or the run (started here) closed before it was called."""
    await start_worker(workflows=[echoed], activities=[echo])
    assert await (await client.start(echoed, "warm", False)).result(timeout=30) == "warm"  # listener up
    handle = await client.start(echoed, "x" * size, False)
    if closed_first:
        await wait_until(lambda: client.listener.watched[handle.run_id][1], timeout=30, what="the close NOTIFY")
    counted = _count_reads(handle)
    assert await handle.result(timeout=30) == "x" * size
    assert len(counted) == reads


async def test_failure_from_the_close_notify(client, start_worker):
    await start_worker(workflows=[echoed], activities=[echo])
    assert await (await client.start(echoed, "warm", False)).result(timeout=30) == "warm"  # listener up
    handle = await client.start(echoed, "broken", True)
    counted = _count_reads(handle)
    with pytest.raises(WorkflowFailure) as err:
        await handle.result(timeout=30)
    assert err.value.type == "ValueError"
    assert "broken" in str(err.value)
    assert counted == []  # the failure came with the NOTIFY
