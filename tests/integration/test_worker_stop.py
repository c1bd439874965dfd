"""A stopping worker finishes what it holds: the workflow-task batch a poller claimed before
stop() is recorded (it was cancelled and rolled back, its local activities to run again),
and nothing is left running when Worker.run returns: attempts a fast-path group leased as
the drain ended were left running, and asyncio.run cancelled them in the middle of their
write, which then failed on the closed pool, logged as an unhandled exception during
shutdown (2 of 4 bench/fairness.py flood workers; the attempt ran again after its lease)."""

from __future__ import annotations

import asyncio
import logging

from cairn import activity, testing, workflow
from support import wait_until

_gates: dict[str, asyncio.Event] = {}
_started: set[str] = set()


def _gate(name: str) -> asyncio.Event:
    return _gates.setdefault(name, asyncio.Event())


@activity.defn
async def held_local(tag: str) -> str:
    """A local activity: keeps the poller's batch open until its gate opens."""
    _started.add(f"local-{tag}")
    await _gate(f"local-{tag}").wait()
    return tag


@activity.defn
async def held_remote(tag: str) -> str:
    _started.add(f"remote-{tag}")
    await _gate(f"remote-{tag}").wait()
    return tag.upper()


@workflow.defn
async def holds_then_calls(tag: str) -> str:
    await workflow.execute_local_activity(held_local, tag, start_to_close_timeout=20)
    return await workflow.execute_activity(held_remote, tag, start_to_close_timeout=30)


async def test_stop_finishes_the_batch_a_poller_holds(db_url, client, sql, caplog):
    _gates.clear()
    _started.clear()
    workers = testing.Workers(db_url)
    worker = await workers.start(workflows=[holds_then_calls], activities=[held_local, held_remote])
    handle = await client.start(holds_then_calls, "x", id="stopping")
    await wait_until(lambda: "local-x" in _started, what="the batch to be held in its local activity")
    with caplog.at_level(logging.ERROR):
        worker.stop()  # the poller holds its batch: it claims no more, and is not cancelled
        _gate("local-x").set()
        await workers.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert worker._activities.running == set()
    # The batch was recorded (its local activity's marker and the activity it scheduled), not
    # rolled back; a stopping worker leases nothing eagerly: the activity waits in its queue.
    assert sql("SELECT type FROM cairn.history WHERE run_id = %s ORDER BY seq", [handle.run_id])[-2:] == [
        ("MarkerRecorded",), ("ActivityScheduled",)]
    assert sql("SELECT lease_owner FROM cairn.activity_tasks") == [(None,)]
    assert "remote-x" not in _started
    _gate("remote-x").set()
    async with testing.Workers(db_url) as again:
        await again.start(workflows=[holds_then_calls], activities=[held_local, held_remote])
        assert await handle.result(timeout=20) == "X"
    assert _started == {"local-x", "remote-x"}  # the local activity did not run again
