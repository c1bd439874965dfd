"""Work a concurrency slot lets go (issue 18, migration 0029): a waiter is claimable no
earlier than its own ready time (a run's start delay), and at its fairness place (its key's
turn), not at the moment the slot came free behind a backlog. Read from the claim statement
itself, the claims' clock pinned by their %(now)s; the slot freed by a terminate."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from cairn import Priority, workflow
from cairn.store.sql import q
from support import wait_until


@workflow.defn
async def noop(tag: str) -> str:
    return tag


def _claim(db_url: str, now: datetime | None) -> list[str]:
    """The workflow id the claim takes at ``now`` (its task then removed, as a worker's record
    would), or nothing."""
    params = {"namespace": "default", "queues": ["default"], "types": ["noop"], "limit": 1, "now": now, "low": False}
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(q("claim_workflow_task"), params).fetchall()
        for row in rows:
            conn.execute("DELETE FROM cairn.workflow_tasks WHERE run_id = %s", (row[0],))
        conn.commit()
    return [row[2] for row in rows]


def _place(db_url: str, now: datetime) -> tuple[int, int, int]:
    """``place_due_retries`` at ``now``, as the workers' maintenance pass: (due, done, placed)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(q("place_due_retries"), {"limit": 100, "now": now}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _created(sql: Any, wid: str) -> datetime:
    [(at,)] = sql("SELECT created_at FROM cairn.runs WHERE workflow_id = %s", (wid,))
    assert isinstance(at, datetime)
    return at


def _behind(sql: Any, wid: str) -> int:
    """How many of A's waiting tasks are placed strictly before the run ``wid``'s task."""
    [(n,)] = sql("""SELECT count(*) FROM cairn.workflow_tasks a, cairn.workflow_tasks b JOIN cairn.runs r USING (run_id)
                    WHERE r.workflow_id = %s AND a.fairness_key = 'tenant-a' AND a.available_at < b.available_at""",
                 (wid,))
    return int(n)


@pytest.mark.parametrize("priority", [None, Priority(fairness_key="tenant-b")], ids=["unkeyed", "keyed"])
async def test_a_delayed_waiter_let_go_waits_out_its_delay(client: Any, db_url: str, sql: Any,
                                                           priority: Priority | None) -> None:
    await client.limits.set("k", 1, kind="workflow")
    running = await client.start(noop, "r", id="r", concurrency_key="k")
    assert _claim(db_url, None) == ["r"]  # it runs (its slot stays taken until it closes)
    await client.start(noop, "d", id="d", concurrency_key="k", priority=priority, start_delay=30)
    assert sql("SELECT count(*) FROM cairn.concurrency_waiting") == [(1,)]
    ready = _created(sql, "d") + timedelta(seconds=30)
    await running.terminate("done")  # its slot goes to the waiter, 30 s before its delay is over
    assert sql("SELECT count(*) FROM cairn.concurrency_waiting") == [(0,)]
    assert sql("SELECT in_use FROM cairn.concurrency_limits WHERE key = 'k'") == [(1,)]
    [(available_at,)] = sql("SELECT available_at FROM cairn.workflow_tasks")
    assert available_at == ready
    booked = sql("SELECT seq, ready_at FROM cairn.retry_places")
    assert booked == ([(0, ready)] if priority else [])  # a keyed one is placed when due, as 0027's
    before = ready - timedelta(seconds=1)
    assert _place(db_url, before) == (0, 0, 0)
    assert _claim(db_url, before) == []
    after = ready + timedelta(seconds=1)
    if priority:
        assert _place(db_url, after) == (1, 1, 1)
    assert _claim(db_url, after) == ["d"]


@pytest.mark.parametrize("delay", [None, 0.2], ids=["ready", "delay-over"])
async def test_a_keyed_waiter_let_go_takes_its_keys_turn(client: Any, db_url: str, sql: Any,
                                                         delay: float | None) -> None:
    # B waits for K's slot while A's backlog queues; once let go, B enters at A's head (its
    # key's turn), not behind all 60 of A's tasks queued before the slot came free.
    await client.limits.set("k", 1, kind="workflow")
    running = await client.start(noop, "r", id="r", concurrency_key="k")
    assert _claim(db_url, None) == ["r"]
    await client.start(noop, "b", id="b", concurrency_key="k", priority=Priority(fairness_key="tenant-b"),
                       start_delay=delay)
    for i in range(60):
        await client.start(noop, f"a-{i}", id=f"a-{i}", priority=Priority(fairness_key="tenant-a"))
    if delay:
        await wait_until(lambda: sql("SELECT now() >= created_at + interval '0.2 s' FROM cairn.runs "
                                     "WHERE workflow_id = 'b'") == [(True,)], what="b's delay to be over")
    await running.terminate("done")
    assert sql("SELECT count(*) FROM cairn.retry_places") == [(0,)]  # ready: placed at once
    assert _behind(sql, "b") <= 1
    order = [w for _ in range(3) for w in _claim(db_url, None)]
    assert "b" in order[:2], order


async def test_an_unkeyed_waiter_let_go_queues_as_before(client: Any, db_url: str, sql: Any) -> None:
    # No fairness key, no delay: placed at the moment its slot came free (its priority's
    # credit), behind the tasks queued before, as 0023 placed it.
    await client.limits.set("k", 1, kind="workflow")
    running = await client.start(noop, "r", id="r", concurrency_key="k")
    assert _claim(db_url, None) == ["r"]
    await client.start(noop, "w", id="w", concurrency_key="k")
    for i in range(3):
        await client.start(noop, f"a-{i}", id=f"a-{i}")
    await running.terminate("done")
    assert sql("SELECT available_at <= now() FROM cairn.workflow_tasks t JOIN cairn.runs r USING (run_id) "
               "WHERE r.workflow_id = 'w'") == [(True,)]
    assert [w for _ in range(5) for w in _claim(db_url, None)] == ["a-0", "a-1", "a-2", "w"]
