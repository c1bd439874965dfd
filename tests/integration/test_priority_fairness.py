"""Priority, fairness and per-key concurrency limits (issue 18, item 3), in one process:
the claim order of priorities and fairness keys read from the claim statement itself; a
key's limit held for runs and for activities while in-process workers run them; describe,
inheritance, and bad input refused with nothing written. Worker processes and kill -9:
tests/acceptance/test_limits_processes.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import psycopg
import pytest

from cairn import Priority, activity, workflow
from cairn.errors import InputValidationError
from cairn.store.sql import q
from cairn.verify import verify
from cairn.worker import POLL_INTERVAL_SECONDS
from support import wait_until

_running: Counter[str] = Counter()
_most: Counter[str] = Counter()
_gates: dict[str, asyncio.Event] = {}


@activity.defn
async def step(tag: str) -> str:
    return f"done {tag}"


@activity.defn
async def held(key: str) -> str:
    """Counts how many of the key's attempts run at once, then waits for its gate."""
    _running[key] += 1
    _most[key] = max(_most[key], _running[key])
    try:
        await _gates.setdefault(key, asyncio.Event()).wait()
    finally:
        _running[key] -= 1
    return key


@workflow.defn
async def noop(tag: str) -> str:
    return tag


@workflow.defn
async def gated(tag: str) -> str:
    return await workflow.execute_activity(held, tag, start_to_close_timeout=60)


@workflow.defn
async def fan_out(key: str, n: int) -> list[str]:
    calls = [workflow.execute_activity(held, key, start_to_close_timeout=60, concurrency_key=key)
             for _ in range(n)]
    return list(await asyncio.gather(*calls))


@workflow.defn
async def inherits(tag: str) -> dict[str, Any]:
    await workflow.execute_activity(step, tag, start_to_close_timeout=10)
    await workflow.execute_activity(step, tag, start_to_close_timeout=10, priority=Priority(priority_key=1))
    info = workflow.info().priority
    return {"priority": info.to_json() if info else None}


@activity.defn
async def hold_batch(tag: str) -> str:
    """A local activity: keeps its workflow task's batch (and the poller running it) busy
    until its gate opens."""
    _running[tag] += 1
    await _gates.setdefault(tag, asyncio.Event()).wait()
    return tag


@workflow.defn
async def busy(tag: str) -> str:
    """A's runs hold their batch; B's (the same type: one claim order) close at once."""
    if tag.startswith("b"):
        return tag
    return await workflow.execute_local_activity(hold_batch, "busy", start_to_close_timeout=20)


def _claim_order(db_url: str, workflow_type: str, n: int) -> list[str]:
    """The workflow ids the claim takes, one claim at a time, each claimed task then
    removed (as a worker's record would), so the next claim shows the next in order."""
    order: list[str] = []
    params = {"namespace": "default", "queues": ["default"], "types": [workflow_type], "limit": 1, "now": None}
    with psycopg.connect(db_url) as conn:
        for _ in range(n):
            # as cairn.store.tasks.claim: priorities 1-3 first, then the low lane (4-5)
            rows = (conn.execute(q("claim_workflow_task"), {**params, "low": False}).fetchall()
                    or conn.execute(q("claim_workflow_task"), {**params, "low": True}).fetchall())
            if not rows:
                break
            run_id, wid = rows[0][0], rows[0][2]
            conn.execute("DELETE FROM cairn.workflow_tasks WHERE run_id = %s", (run_id,))
            conn.commit()
            order.append(wid)
    return order


async def test_priorities_are_claimed_in_order(client: Any, db_url: str) -> None:
    # Started in this order: the claim takes 1, 2, then 3 and the default in start order, then 4, 5.
    for wid, prio in [("p5", 5), ("p3", 3), ("none", None), ("p1", 1), ("p4", 4), ("p2", 2), ("p1b", 1)]:
        await client.start(noop, wid, id=wid, priority=prio)
    assert _claim_order(db_url, "noop", 10) == ["p1", "p1b", "p2", "p3", "none", "p4", "p5"]


async def test_tasks_without_keys_keep_their_start_order(client: Any, db_url: str) -> None:
    ids = [f"plain-{i}" for i in range(12)]
    for wid in ids:
        await client.start(noop, wid, id=wid)
    assert _claim_order(db_url, "noop", 20) == ids


async def test_a_newcomer_key_is_claimed_before_a_flooding_key(client: Any, db_url: str) -> None:
    for i in range(150):
        await client.start(noop, f"a-{i}", id=f"a-{i}", priority=Priority(fairness_key="tenant-a"))
    for i in range(5):
        await client.start(noop, f"b-{i}", id=f"b-{i}", priority=Priority(fairness_key="tenant-b"))
    order = _claim_order(db_url, "noop", 200)
    assert len(order) == 155
    # B's five alternate with A's backlog from the head, instead of waiting behind all 150.
    b_positions = [order.index(f"b-{i}") for i in range(5)]
    assert max(b_positions) < 12, b_positions
    assert [w for w in order if w.startswith("b-")] == [f"b-{i}" for i in range(5)]  # FIFO within a key
    assert [w for w in order if w.startswith("a-")] == [f"a-{i}" for i in range(150)]


async def test_weights_share_a_level_in_proportion(client: Any, db_url: str) -> None:
    for i in range(60):
        await client.start(noop, f"light-{i}", id=f"light-{i}", priority=Priority(fairness_key="light"))
        await client.start(noop, f"heavy-{i}", id=f"heavy-{i}",
                           priority=Priority(fairness_key="heavy", fairness_weight=3.0))
    first = _claim_order(db_url, "noop", 40)
    heavy = sum(w.startswith("heavy-") for w in first)
    # A weight of 3 against 1: three of every four claims while both have a backlog.
    assert 27 <= heavy <= 33, first


async def test_a_key_whose_tasks_were_claimed_enters_at_the_head_again(client: Any, db_url: str,
                                                                      sql: Any) -> None:
    # B's place (its fairness_places row) outlives B's tasks: once they are claimed, a new B
    # run must still go ahead of A's backlog, not after B's old place plus A's turns.
    for i in range(3):
        await client.start(noop, f"b-{i}", id=f"b-{i}", priority=Priority(fairness_key="tenant-b"))
    assert _claim_order(db_url, "noop", 3) == ["b-0", "b-1", "b-2"]
    for i in range(100):
        await client.start(noop, f"a-{i}", id=f"a-{i}", priority=Priority(fairness_key="tenant-a"))
    await client.start(noop, "b-late", id="b-late", priority=Priority(fairness_key="tenant-b"))
    assert _claim_order(db_url, "noop", 2) in (["a-0", "b-late"], ["b-late", "a-0"])
    rows = sql("SELECT key FROM cairn.fairness_places WHERE kind = 'workflow' ORDER BY key")
    assert [r[0] for r in rows] == ["tenant-a", "tenant-b"]


async def test_a_runs_later_tasks_keep_its_place(client: Any, db_url: str, sql: Any) -> None:
    # B (a fairness key) and P (priority 1) ran their first task; a backlog of A queued
    # meanwhile; a signal to each makes its next task, which must be placed as its first
    # was (0025, cairn.run_task_at), not behind A's whole backlog.
    b = await client.start(noop, "b", id="b", priority=Priority(fairness_key="tenant-b"))
    p = await client.start(noop, "p", id="p", priority=1)
    assert sorted(_claim_order(db_url, "noop", 2)) == ["b", "p"]
    for i in range(60):
        await client.start(noop, f"a-{i}", id=f"a-{i}", priority=Priority(fairness_key="tenant-a"))
    await b.signal("poke", 1)
    await p.signal("poke", 1)
    assert sql("SELECT t.priority, t.fairness_key FROM cairn.workflow_tasks t JOIN cairn.runs r USING (run_id) "
               "WHERE r.workflow_id IN ('b', 'p') ORDER BY r.workflow_id") == [(3, "tenant-b"), (1, None)]
    order = _claim_order(db_url, "noop", 4)
    assert order[0] == "p", order
    assert "b" in order[1:3], order


@workflow.defn
async def one_call(tag: str) -> str:
    return await workflow.execute_activity(step, tag, start_to_close_timeout=60)


def _claim_activities(db_url: str, n: int, until: str | None = None) -> list[tuple[str, Any, int, int]]:
    """The activities the claim takes, one claim at a time (workflow id, run id, seq, token),
    up to ``n`` or until the workflow id ``until`` is taken."""
    order: list[tuple[str, Any, int, int]] = []
    params = {"namespace": "default", "queues": ["default"], "types": ["step"], "worker": "test", "lease": 60,
              "limit": 1, "now": None}
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(n):
            rows = (conn.execute(q("claim_activity_tasks"), {**params, "low": False}).fetchall()
                    or conn.execute(q("claim_activity_tasks"), {**params, "low": True}).fetchall())
            if not rows:
                break
            run_id, seq, token, _attempt, wid = rows[0][:5]
            order.append((wid, run_id, seq, token))
            if wid == until:
                break
    return order


async def test_an_activity_retry_is_placed_when_due(client: Any, start_worker: Any, db_url: str,
                                                    sql: Any) -> None:
    # A's 40 activities wait (no worker runs `step`); B's one is scheduled after them and
    # enters at the head. Claimed in order, B's attempt fails and is retried 0.2 s later.
    # Ready at its ready time, it would queue behind the A activities still waiting (placed
    # when scheduled, earlier); booked in retry_places, it is placed at its fairness turn
    # when due (0025, place_due_retries: here by hand, or by the worker's maintenance pass).
    for i in range(40):
        await client.start(one_call, f"a{i}", id=f"a-{i}", priority=Priority(fairness_key="tenant-a"))
    await start_worker(workflows=[one_call], activities=[])
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.activity_tasks")[0][0] == 40)
    await client.start(one_call, "b", id="b", priority=Priority(fairness_key="tenant-b"))
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.activity_tasks")[0][0] == 41)
    taken = _claim_activities(db_url, 41, until="b")
    assert taken[-1][0] == "b", taken
    # A new key enters at the head: tied with the oldest lump of A's (one record statement's
    # activities share its now(), capped there, up to a claim batch of them; two batches
    # recorded at once may share a place too)
    assert len(taken) <= 17, taken
    _, run_id, seq, token = taken[-1]
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(q("retry_activity"), {"run_id": run_id, "seq": seq, "token": token, "now": None,
                                                  "delay": 0.2, "failure": None, "beat": False,
                                                  "details": None}).fetchall()
        assert rows == [("default",)]
        assert sql("SELECT count(*) FROM cairn.retry_places") in ([(1,)], [(0,)])  # the worker may place it
        await asyncio.sleep(0.3)
        conn.execute(q("place_due_retries"), {"limit": 100, "now": None})
    assert sql("SELECT count(*) FROM cairn.retry_places") == [(0,)]
    rest = [wid for wid, *_ in _claim_activities(db_url, 41)]
    assert len(rest) == 41 - len(taken) + 1
    assert len(rest) >= 24, rest
    # At the head (a lump, as above), not behind the A activities still waiting.
    assert rest.index("b") <= 16, rest


async def test_concurrent_starts_of_one_key_share_one_place_row(client: Any, sql: Any) -> None:
    # The first start of a key inserts its row while the others wait on it (ON CONFLICT DO
    # UPDATE): no unique violation, no deadlock, one row. (Places are not all distinct: a
    # place is never later than its transaction's now(), and concurrent starts' clocks are
    # microseconds apart, inside the 100 us stride.)
    await asyncio.gather(*(client.start(noop, f"c-{i}", id=f"c-{i}", priority=Priority(fairness_key="tenant-c"))
                           for i in range(20)))
    assert sql("SELECT count(*) FROM cairn.workflow_tasks WHERE fairness_key = 'tenant-c'") == [(20,)]
    assert sql("SELECT count(*) FROM cairn.fairness_places WHERE key = 'tenant-c'") == [(1,)]


async def test_maintenance_forgets_places_not_written_for_an_hour(client: Any, sql: Any, db_url: str) -> None:
    for key in ("old", "new"):
        await client.start(noop, key, id=key, priority=Priority(fairness_key=key))
    sql("UPDATE cairn.fairness_places SET placed_at = now() - interval '61 minutes' WHERE key = 'old'")
    with psycopg.connect(db_url) as conn:
        conn.execute(q("forget_workers"), {"retention_seconds": 3600})
    rows = sql("SELECT key FROM cairn.fairness_places")
    assert [r[0] for r in rows] == ["new"]


async def test_a_newcomer_key_is_claimed_while_every_poller_is_busy(client: Any, start_worker: Any,
                                                                    sql: Any) -> None:
    # A's backlog, more than one batch; the worker's only poller claims a batch of it and is
    # held in the first task's local activity: no poller will claim again until it opens.
    _gates.pop("busy", None)
    _running["busy"] = 0
    a_runs = [await client.start(busy, f"a-{i}", id=f"a-{i}", priority=Priority(fairness_key="tenant-a"))
              for i in range(12)]
    await start_worker(workflows=[busy], activities=[hold_batch], workflow_concurrency=1)
    await wait_until(lambda: _running["busy"] == 1)
    try:
        # B's start NOTIFYs while the poller is busy: the latency lane claims the head of the
        # order, B's task (a new key), and B closes while A's batch is still held.
        b = await client.start(busy, "b", id="b", priority=Priority(fairness_key="tenant-b"))
        assert await asyncio.wait_for(b.result(), 15) == "b"
        claimed = sql("SELECT r.workflow_id FROM cairn.runs r JOIN cairn.history h ON h.run_id = r.run_id "
                      "WHERE h.seq = 2")
        # The lane took B alone, not A's next, and A's batch is still held (had its local
        # activity timed out, its tasks would be recorded, their markers here).
        assert sorted(w for (w,) in claimed) == ["b"]
        assert sql("SELECT count(*) FROM cairn.workflow_tasks WHERE fairness_key = 'tenant-a'")[0][0] == 12
    finally:
        _gates.setdefault("busy", asyncio.Event()).set()
    assert [await h.result() for h in a_runs] == ["busy"] * 12


async def test_a_worker_claims_a_new_low_lane_of_its_namespace(client: Any, start_worker: Any, sql: Any) -> None:
    # The workers start before their namespace ever queued priority 4-5: their claims scan
    # the default lane alone, until a maintenance pass (next_due) reads cairn.low_lanes. A
    # run at priority 5, and its activity (which inherits it; claimed by another worker, not
    # leased eagerly), are run all the same.
    # At the poll interval a new user gets (the maintenance pass that reads the lanes runs at
    # least that often), not the tests' shorter one.
    runs = await start_worker(workflows=[one_call], activities=[], poll_interval=POLL_INTERVAL_SECONDS)
    steps = await start_worker(workflows=[], activities=[step], poll_interval=POLL_INTERVAL_SECONDS)
    assert sql("SELECT count(*) FROM cairn.low_lanes")[0][0] == 0
    handle = await client.start(one_call, "low", id="low", priority=5)
    assert await asyncio.wait_for(handle.result(), 15) == "done low"
    assert sorted(sql("SELECT kind FROM cairn.low_lanes")) == [("activity",), ("workflow",)]
    assert sql("SELECT h.data -> 'options' -> 'priority' ->> 'priority_key' FROM cairn.history h "
               "WHERE h.type = 'ActivityScheduled'") == [("5",)]
    assert "workflow" in runs._wakes.low_lanes
    assert "activity" in steps._wakes.low_lanes


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"priority": 0}, "priority_key"),
    ({"priority": 6}, "priority_key"),
    ({"priority": True}, "priority_key"),
    ({"concurrency_key": ""}, "concurrency_key"),
    ({"concurrency_key": "a\nb"}, "concurrency_key"),
])
async def test_bad_start_input_writes_nothing(client: Any, sql: Any, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InputValidationError, match=fragment):
        await client.start(noop, "x", id="bad", **kwargs)
    assert sql("SELECT count(*) FROM cairn.runs")[0][0] == 0


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda: Priority(priority_key=0), "priority_key"),
    (lambda: Priority(priority_key=6), "priority_key"),
    (lambda: Priority(fairness_weight=-1.0), "fairness_weight"),
    (lambda: Priority(fairness_weight=0), "fairness_weight"),
    (lambda: Priority(fairness_weight=float("nan")), "fairness_weight"),
    (lambda: Priority(fairness_key=""), "fairness_key"),
    (lambda: Priority(fairness_key="   "), "fairness_key"),
])
def test_bad_priorities_are_refused(make: Any, fragment: str) -> None:
    with pytest.raises(InputValidationError, match=fragment):
        make()


async def test_bad_limits_write_nothing(client: Any, sql: Any) -> None:
    for key, n, kind in [("", 2, None), ("k", -1, None), ("k", 2, "both"), ("k", True, None)]:
        with pytest.raises(InputValidationError):
            await client.limits.set(key, n, kind=kind)
    assert sql("SELECT count(*) FROM cairn.concurrency_limits")[0][0] == 0


async def test_a_workflow_limit_holds_runs_until_slots_free(client: Any, start_worker: Any, sql: Any,
                                                            db_url: str) -> None:
    await client.limits.set("cust-42", 2, kind="workflow")
    handles = [await client.start(gated, f"run-{i}", id=f"w-{i}", concurrency_key="cust-42") for i in range(5)]
    await start_worker(workflows=[gated], activities=[held])
    await wait_until(lambda: _running["run-0"] + _running["run-1"] == 2)
    # The other three wait, created but not started: their first task is held.
    waiting = sql("SELECT count(*) FROM cairn.concurrency_waiting WHERE key = 'cust-42'")[0][0]
    assert waiting == 3
    described = await handles[4].describe()
    assert described.concurrency_key == "cust-42"
    assert described.waiting_for_slot
    assert (await client.limits.list("cust-42"))[0].in_use == 2
    for i in range(5):
        _gates.setdefault(f"run-{i}", asyncio.Event()).set()
    for h in handles:
        assert (await h.result())
    started = sql("""SELECT r.workflow_id FROM cairn.runs r JOIN cairn.history h ON h.run_id = r.run_id
                     WHERE h.seq = 2 ORDER BY h.at, r.workflow_id""")
    assert [w for (w,) in started][:2] == ["w-0", "w-1"]
    assert sql("SELECT in_use FROM cairn.concurrency_limits WHERE key = 'cust-42'")[0][0] == 0
    report = await verify(db_url, workflows=[gated])
    assert report.ok(), report


async def test_an_activity_limit_holds_attempts_across_runs(client: Any, start_worker: Any, sql: Any) -> None:
    await client.limits.set("api", 2, kind="activity")
    handles = [await client.start(fan_out, "api", 3, id=f"fan-{i}") for i in range(2)]
    await start_worker(workflows=[fan_out], activities=[held])
    await wait_until(lambda: _running["api"] == 2)
    assert sql("SELECT count(*) FROM cairn.activity_tasks WHERE concurrency_key = 'api' "
               "AND available_at = 'infinity'")[0][0] == 4
    _gates.setdefault("api", asyncio.Event()).set()
    for h in handles:
        assert await h.result() == ["api"] * 3
    assert _most["api"] == 2
    assert sql("SELECT in_use FROM cairn.concurrency_limits WHERE key = 'api'")[0][0] == 0


async def test_raising_and_removing_a_limit_lets_waiting_runs_go(client: Any, start_worker: Any, sql: Any) -> None:
    await client.limits.set("slow", 0, kind="workflow")  # holds every run of the key
    handles = [await client.start(noop, f"r{i}", id=f"r{i}", concurrency_key="slow") for i in range(3)]
    assert await client.limits.set("slow", 1, kind="workflow") == 1
    # No limit: the other two go; the key's row stays while its runs hold slots, counting.
    assert await client.limits.delete("slow", kind="workflow") == 2
    [row] = await client.limits.list("slow")
    assert (row.max_running, row.in_use, row.waiting) == (None, 3, 0)
    await start_worker(workflows=[noop])
    assert [await h.result() for h in handles] == ["r0", "r1", "r2"]
    assert sql("SELECT in_use FROM cairn.concurrency_limits WHERE key = 'slow'")[0][0] == 0


async def test_activities_and_describe_inherit_the_run_priority(client: Any, start_worker: Any, sql: Any) -> None:
    handle = await client.start(inherits, "t", priority=Priority(priority_key=2, fairness_key="acme"))
    await start_worker(workflows=[inherits], activities=[step])
    assert await handle.result() == {"priority": {"priority_key": 2, "fairness_key": "acme"}}
    options = [o for (o,) in sql("""SELECT data -> 'options' FROM cairn.history
                                    WHERE type = 'ActivityScheduled' ORDER BY seq""")]
    assert [o["priority"] for o in options] == [{"priority_key": 2, "fairness_key": "acme"},
                                               {"priority_key": 1, "fairness_key": "acme"}]
    d = await handle.describe()
    assert d.priority == Priority(priority_key=2, fairness_key="acme")
    assert d.to_json()["priority"]["fairness_key"] == "acme"


async def test_terminating_a_waiting_run_gives_back_no_slot(client: Any, start_worker: Any, sql: Any) -> None:
    await client.limits.set("one", 1, kind="workflow")
    first = await client.start(gated, "t0", id="t0", concurrency_key="one")
    waiting = [await client.start(gated, f"t{i}", id=f"t{i}", concurrency_key="one") for i in (1, 2)]
    await waiting[0].terminate("not needed")  # it never started: it held no slot
    [row] = await client.limits.list("one")
    assert (row.in_use, row.waiting) == (1, 1)
    await start_worker(workflows=[gated], activities=[held])
    for tag in ("t0", "t2"):
        _gates.setdefault(tag, asyncio.Event()).set()
    assert await first.result() == "t0"
    assert await waiting[1].result() == "t2"  # started once t0 closed
    assert sql("SELECT in_use FROM cairn.concurrency_limits WHERE key = 'one'")[0][0] == 0
