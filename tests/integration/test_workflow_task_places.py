"""A keyed or prioritised run's workflow task keeps its place after a failure and after a
start delay (issue 18, migration 0027): booked in ``retry_places`` (seq 0), placed when due
by ``place_due_retries`` as a new task of its run, ahead of a backlog queued before it was
ready. Read from the claim statement itself, in one process; worker processes and kill -9:
tests/acceptance/test_placement_processes.py."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cairn import Priority, workflow
from cairn.store.sql import q
from cairn.verify import verify
from support import wait_until

CLAIM = {"namespace": "default", "queues": ["default"], "types": ["noop"], "limit": 1, "now": None, "low": False}


@workflow.defn
async def noop(tag: str) -> str:
    return tag


async def _flood(client: Any, n: int) -> None:
    """``n`` runs of key A, started one after another: each its own place, a stride apart."""
    for i in range(n):
        await client.start(noop, f"a{i}", id=f"a-{i}", priority=Priority(fairness_key="tenant-a"))


def _claim_and_fail(db_url: str, failing: set[str], delay: float) -> list[str]:
    """Claims one task at a time: the runs in ``failing`` fail (``fail_workflow_task``, backed
    off ``delay`` seconds, in the claim's transaction, as a worker's failed task), the others
    are removed as a worker's record would. Returns the ids claimed, until all failed."""
    claimed: list[str] = []
    with psycopg.connect(db_url) as conn:
        while failing - set(claimed):
            [row] = conn.execute(q("claim_workflow_task"), CLAIM).fetchall()
            run_id, wid = row[0], row[2]
            if wid in failing:
                conn.execute(q("fail_workflow_task"), {"run_id": run_id, "now": None, "delay": delay,
                                                       "error": Jsonb({"type": "TypeError", "message": "a bug"})})
            else:
                conn.execute("DELETE FROM cairn.workflow_tasks WHERE run_id = %s", (run_id,))
            conn.commit()
            claimed.append(wid)
    return claimed


def _claim_order(db_url: str, n: int) -> list[str]:
    """The workflow ids the claim takes next, one at a time, each claimed task then removed."""
    order: list[str] = []
    with psycopg.connect(db_url) as conn:
        for _ in range(n):
            rows = conn.execute(q("claim_workflow_task"), CLAIM).fetchall()
            if not rows:
                break
            conn.execute("DELETE FROM cairn.workflow_tasks WHERE run_id = %s", (rows[0][0],))
            conn.commit()
            order.append(rows[0][2])
    return order


def _place(db_url: str) -> tuple[int, int, int]:
    """Runs ``place_due_retries`` as the workers' maintenance pass does: (due, done, placed)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(q("place_due_retries"), {"limit": 100, "now": None}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _behind(sql: Any, wid: str) -> int:
    """How many of A's waiting tasks are placed strictly before the run ``wid``'s task."""
    [(n,)] = sql("""SELECT count(*) FROM cairn.workflow_tasks a, cairn.workflow_tasks b JOIN cairn.runs r USING (run_id)
                    WHERE r.workflow_id = %s AND a.fairness_key = 'tenant-a' AND a.available_at < b.available_at""",
                 (wid,))
    return int(n)


async def _due(sql: Any) -> None:
    await wait_until(lambda: sql("SELECT bool_and(ready_at <= now()) FROM cairn.retry_places") == [(True,)],
                     what="the bookings to be due")


async def test_a_failed_workflow_task_keeps_its_place(client: Any, db_url: str, sql: Any) -> None:
    # A's 60 tasks wait; B (a new key) enters at their head, P (priority 1) before them. Both
    # are claimed, and their code fails: backed off 0.3 s, each would be ready behind all of
    # A's backlog. Booked (seq 0), each is placed when due as a new task of its run.
    await _flood(client, 60)
    await client.start(noop, "b", id="b", priority=Priority(fairness_key="tenant-b"))
    await client.start(noop, "p", id="p", priority=1)
    claimed = _claim_and_fail(db_url, {"b", "p"}, delay=0.3)
    assert claimed[0] == "p", claimed
    assert "b" in claimed[1:3], claimed
    booked = sql("""SELECT r.workflow_id, p.seq, p.ready_at = t.available_at, t.failures FROM cairn.retry_places p
                    JOIN cairn.runs r USING (run_id) JOIN cairn.workflow_tasks t USING (run_id) ORDER BY 1""")
    assert booked == [("b", 0, True, 1), ("p", 0, True, 1)]
    waiting = 60 - (len(claimed) - 2)
    assert _behind(sql, "b") == waiting  # at their ready time: behind all of A's
    assert _behind(sql, "p") == waiting
    await _due(sql)
    assert _place(db_url) == (2, 2, 2)
    assert sql("SELECT count(*) FROM cairn.retry_places") == [(0,)]
    assert _behind(sql, "p") == 0
    assert _behind(sql, "b") <= 1  # B's next turn: right after the head of A's backlog
    order = _claim_order(db_url, 100)
    assert order[0] == "p", order
    assert "b" in order[1:3], order
    assert len(order) == waiting + 2


async def test_a_delayed_start_is_placed_when_due(client: Any, db_url: str, sql: Any) -> None:
    # A delayed start queued at created + delay by ready time, behind the whole backlog placed
    # before that moment; booked (seq 0), it is placed when due.
    await _flood(client, 60)
    await client.start(noop, "b", id="b", priority=Priority(fairness_key="tenant-b"), start_delay=0.3)
    await client.start(noop, "p", id="p", priority=1, start_delay=0.3)
    booked = sql("""SELECT r.workflow_id, p.ready_at = t.available_at, p.ready_at = r.created_at + interval '0.3 s'
                    FROM cairn.retry_places p JOIN cairn.runs r USING (run_id)
                    JOIN cairn.workflow_tasks t USING (run_id) WHERE p.seq = 0 ORDER BY 1""")
    assert booked == [("b", True, True), ("p", True, True)]
    assert _behind(sql, "b") == 60
    assert _behind(sql, "p") == 60
    assert _claim_order(db_url, 1) == ["a-0"]  # not ready yet
    await _due(sql)
    assert _place(db_url) == (2, 2, 2)
    assert _behind(sql, "p") == 0
    assert _behind(sql, "b") <= 1
    order = _claim_order(db_url, 100)
    assert order[0] == "p", order
    assert "b" in order[1:3], order
    assert len(order) == 61


async def test_signal_with_start_books_a_delayed_keyed_start(client: Any, sql: Any) -> None:
    # The same start statement (start_workflow): the delay holds the task, the booking places
    # it when due; the signal does not cut the delay short. (Children, continue-as-new, reset,
    # retry and a schedule's runs take no start delay: a schedule's jitter delays the slot's
    # action, whose run is then placed at once.)
    await client.signal_with_start(noop, "s", id="s", signal="poke", signal_payload=1, start_delay=0.3,
                                   priority=Priority(fairness_key="tenant-s"))
    assert sql("""SELECT p.seq, p.ready_at = t.available_at, p.ready_at = r.created_at + interval '0.3 s'
                  FROM cairn.retry_places p JOIN cairn.runs r USING (run_id)
                  JOIN cairn.workflow_tasks t USING (run_id)""") == [(0, True, True)]


async def test_default_runs_book_nothing(client: Any, db_url: str, sql: Any) -> None:
    # No key, priority 3 (given or not): a start delay and a failure write nothing more. A
    # keyed start with a delay of 0 is placed at once, as one without a delay: no booking.
    await client.start(noop, "plain", id="plain")
    await client.start(noop, "three", id="three", priority=3)
    await client.start(noop, "later", id="later", start_delay=0.2)
    await client.start(noop, "zero", id="zero", priority=Priority(fairness_key="k"), start_delay=0)
    assert sql("SELECT count(*) FROM cairn.retry_places") == [(0,)]
    claimed = _claim_and_fail(db_url, {"plain", "three", "zero"}, delay=0.2)
    assert sorted(claimed[:3]) == ["plain", "three", "zero"]
    # only the keyed run's failure is booked
    assert sql("SELECT r.workflow_id, p.seq FROM cairn.retry_places p JOIN cairn.runs r USING (run_id)") == [
        ("zero", 0)]


async def test_a_booking_whose_task_a_worker_holds_is_kept_until_it_lets_go(client: Any, db_url: str,
                                                                             sql: Any) -> None:
    # B's failed task is due; a worker claims it at its ready time, before a maintenance pass
    # placed it, and holds its lock while it runs. The pass neither waits for the lock nor
    # drops the booking: when the worker dies (its connection, and so the lock, goes) without
    # recording anything, the next pass places the task.
    await _flood(client, 5)
    await client.start(noop, "b", id="b", priority=Priority(fairness_key="tenant-b"))
    _claim_and_fail(db_url, {"b"}, delay=0.2)
    [(ready_at,)] = sql("SELECT ready_at FROM cairn.retry_places")
    await _due(sql)
    with psycopg.connect(db_url) as worker:
        rows = worker.execute(q("claim_workflow_task"), {**CLAIM, "limit": 10}).fetchall()
        assert "b" in [r[2] for r in rows]
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("SET lock_timeout = '5s'")  # a wait would fail here, not hang
            row = other.execute(q("place_due_retries"), {"limit": 100, "now": None}).fetchone()
        assert row == (1, 0, 0)
        assert sql("SELECT ready_at FROM cairn.retry_places") == [(ready_at,)]
        worker.rollback()  # as a killed worker's connection
    assert _place(db_url) == (1, 1, 1)
    assert sql("SELECT count(*) FROM cairn.retry_places") == [(0,)]
    assert _behind(sql, "b") <= 1
    # A booking whose task is gone (the run went on, or closed) is dropped when due.
    await client.start(noop, "c", id="c", priority=Priority(fairness_key="tenant-c"))
    _claim_and_fail(db_url, {"c"}, delay=0.1)
    sql("DELETE FROM cairn.workflow_tasks WHERE run_id = (SELECT run_id FROM cairn.runs WHERE workflow_id = 'c')")
    await _due(sql)
    assert _place(db_url) == (1, 1, 0)
    assert sql("SELECT count(*) FROM cairn.retry_places") == [(0,)]


_armed: set[str] = set()


@workflow.defn
async def fails_once(tag: str) -> str:
    if tag in _armed:  # a bug the next deployment fixes: the task fails once, history untouched
        _armed.discard(tag)
        raise TypeError(f"a bug in {tag}")
    return tag


async def test_a_workers_maintenance_pass_places_the_bookings(client: Any, start_worker: Any, sql: Any,
                                                              db_url: str) -> None:
    # With a worker running, a keyed run's failed task and a prioritised delayed start are
    # booked, placed (or, claimed at their ready time first, dropped) by its maintenance
    # pass, and run: nothing is left booked, nothing is stuck.
    _armed.add("f")
    worker = await start_worker(workflows=[fails_once])
    delayed = await client.start(fails_once, "d", id="d", priority=2, start_delay=0.3)
    failed = await client.start(fails_once, "f", id="f", priority=Priority(fairness_key="tenant-f"))
    assert await failed.result(timeout=30) == "f"
    assert worker.stats.workflow_task_failures == 1
    assert await delayed.result(timeout=30) == "d"
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.retry_places") == [(0,)], what="no booking left")
    report = await verify(db_url, workflows=[fails_once])
    assert report.ok(), report
