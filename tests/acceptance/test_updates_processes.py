"""Workflow updates with ``cairn worker`` processes: an accepted update survives kill -9 of
its worker and the termination of every Postgres session (the caller's too); the caller
still gets its result, once, when another worker picks the run up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import update_flows
from acceptance_support import history

from cairn import Client, WorkflowUpdateFailedError
from cairn.store import db
from support import TIMEOUT, query

pytestmark = pytest.mark.acceptance


async def until(what: str, check: Callable[[], object], timeout: float = TIMEOUT) -> None:
    """Polls ``check`` without blocking the loop (the caller's update waits on it meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(check):
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


ACCEPTED_AND_RUNNING = """
    SELECT 1 FROM cairn.updates u JOIN cairn.activity_tasks t ON t.run_id = u.run_id
    WHERE u.update_id = 'dep-1' AND u.status = 'accepted' AND t.attempt = 1 AND t.lease_owner IS NOT NULL"""


async def test_accepted_update_survives_kill9_and_lost_connections(workers, db_url):
    a = workers("a", module="update_flows")
    client = await Client.connect(db_url)
    try:
        handle = await client.start(update_flows.ledger, 100, id="upd-crash")
        with pytest.raises(WorkflowUpdateFailedError) as info:  # rejected by a worker process: nothing recorded
            await handle.execute_update("deposit", -1)
        assert info.value.rejected
        assert info.value.type == "BadAmount"

        waiting = asyncio.create_task(handle.execute_update("deposit", 5, id="dep-1"))
        await until("the update to be accepted and its activity to start", lambda: query(db_url, ACCEPTED_AND_RUNNING))
        a.kill9()
        # Every session goes: the dead worker's, the waiting caller's pool and its listener.
        terminated = query(db_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert any(ok for (ok,) in terminated)
        assert not waiting.done()

        b = workers("b", module="update_flows", wait=False)
        await asyncio.to_thread(b.wait_started)
        assert await asyncio.wait_for(waiting, TIMEOUT) == 105
        # The same update id again: the same outcome, not applied twice.
        assert await handle.execute_update("deposit", 5, id="dep-1") == 105
        assert await handle.query("balance") == 105
        assert await handle.execute_update("close") == 105
        assert (await handle.result(timeout=TIMEOUT))["balance"] == 105
    finally:
        await client.close()
    events = history(db_url, "upd-crash")
    accepted = [d for _, t, d, _ in events if t == "UpdateAccepted"]
    completed = [d for _, t, d, _ in events if t == "UpdateCompleted"]
    assert [d["update_id"] for d in accepted] == ["dep-1", accepted[1]["update_id"]]
    assert completed[0] == {"update_id": "dep-1", "result": 105}
    attempts = [d["attempt"] for _, t, d, _ in events if t == "ActivityCompleted"]
    assert attempts == [2], "the killed attempt's result was never recorded"
    assert query(db_url, "SELECT status FROM cairn.updates WHERE update_id = 'dep-1'") == [("completed",)]


CLASS_ACCEPTED_AND_RUNNING = ACCEPTED_AND_RUNNING.replace("dep-1", "cls-dep")


async def test_class_workflow_update_survives_kill9(workers, db_url):
    """The class form in worker processes: an update named by its method, with two typed
    arguments, accepted and waiting on its activity when its worker is killed; another
    worker replays the class instance from history and finishes it, once."""
    a = workers("a", module="update_flows")
    client = await Client.connect(db_url)
    Ledger, Deposit = update_flows.Ledger, update_flows.Deposit
    try:
        handle = await client.start(Ledger.run, 100, id="cls-crash")
        with pytest.raises(WorkflowUpdateFailedError) as info:  # rejected by the validator method
            await handle.execute_update(Ledger.deposit, Deposit(5, "x"), 0)
        assert info.value.type == "BadAmount"
        await handle.signal(Ledger.note, "before", 2)
        waiting = asyncio.create_task(handle.execute_update(Ledger.deposit, Deposit(5, "rent"), 1, id="cls-dep"))
        await until("the update to be accepted and its activity to start",
                    lambda: query(db_url, CLASS_ACCEPTED_AND_RUNNING))
        a.kill9()
        b = workers("b", module="update_flows", wait=False)
        await asyncio.to_thread(b.wait_started)
        assert await asyncio.wait_for(waiting, TIMEOUT) == 105
        assert await handle.query(Ledger.get_balance) == 105
        assert await handle.execute_update(Ledger.close) == 105
        assert await handle.result(timeout=TIMEOUT) == {"balance": 105, "memos": ["before", "before", "rent"]}
    finally:
        await client.close()
    events = history(db_url, "cls-crash")
    assert [d["attempt"] for _, t, d, _ in events if t == "ActivityCompleted"] == [2]
    assert [d["result"] for _, t, d, _ in events if t == "UpdateCompleted"] == [105, 105]


async def test_accepted_update_survives_a_postgres_restart(workers, private_pg):
    """The worker is killed and Postgres crashes (pg_ctl -m immediate) while an accepted
    update's handler waits on its activity; after the restart a new worker finishes it and
    the caller, still waiting, gets the result."""
    with db.connect_sync(private_pg.url()) as c:
        c.execute("CREATE DATABASE upd")
    url = private_pg.url("upd")
    await asyncio.to_thread(db.migrate, url)
    a = workers("a", module="update_flows", url=url)
    client = await Client.connect(url)
    try:
        handle = await client.start(update_flows.ledger, 0, id="upd-restart")
        waiting = asyncio.create_task(handle.execute_update("deposit", 7, id="dep-1"))
        await until("the update to be accepted and its activity to start", lambda: query(url, ACCEPTED_AND_RUNNING))
        a.kill9()
        await asyncio.to_thread(private_pg.crash)
        await asyncio.sleep(1.0)
        assert not waiting.done()
        await asyncio.to_thread(private_pg.start)
        b = workers("b", module="update_flows", url=url, wait=False)
        await asyncio.to_thread(b.wait_started)
        assert await asyncio.wait_for(waiting, TIMEOUT) == 7
        assert await handle.execute_update("close") == 7
        assert (await handle.result(timeout=TIMEOUT))["balance"] == 7
    finally:
        await client.close()
    assert next(d for _, t, d, _ in history(url, "upd-restart") if t == "UpdateCompleted") == {
        "update_id": "dep-1", "result": 7}
