"""Local activities through a real worker and Postgres: no activity_tasks row, markers in
the task's transaction, retries inside the task and after a durable timer, timeouts,
activity.info(), the determinism guard, replay after eviction, and an unregistered type."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from psycopg.types.json import Jsonb

from cairn import ActivityError, RetryPolicy, activity, workflow
from cairn.verify import verify
from support import events, run_status
from support.paths import ROOT

_calls: dict[str, list[dict[str, Any]]] = {}


def _policy(**kw: Any) -> RetryPolicy:
    kw.setdefault("initial_interval", timedelta(seconds=0.05))
    kw.setdefault("backoff_coefficient", 2.0)
    kw.setdefault("jitter", 0.0)
    return RetryPolicy(**kw)


@activity.defn
async def tiny(tag: str, n: int) -> int:
    i = activity.info()
    _calls.setdefault(tag, []).append({"attempt": i.attempt, "key": i.idempotency_key, "seq": i.seq,
                                       "local": i.is_local, "time": time.time()})
    await asyncio.sleep(0)  # real I/O would do: the guard must not trip
    return n * 2


@activity.defn
def flaky(tag: str, failures: int) -> str:
    i = activity.info()
    time.sleep(0.001)  # a thread, a real clock read: outside the workflow's loop
    _calls.setdefault(tag, []).append({"attempt": i.attempt, "time": time.time()})
    if i.attempt <= failures:
        raise ConnectionError(f"flaky attempt {i.attempt}")
    return f"ok after {i.attempt}"


@activity.defn
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slow"


@workflow.defn
async def many_tiny(tag: str, k: int) -> int:
    total = 0
    for n in range(k):
        total += await workflow.execute_local_activity(tiny, tag, n, start_to_close_timeout=5)
    return total


@workflow.defn
async def retried_locally(tag: str, failures: int, threshold: float) -> str:
    return str(await workflow.execute_local_activity(
        flaky, tag, failures, start_to_close_timeout=5, local_retry_threshold=threshold,
        retry_policy=_policy(maximum_attempts=5)))


@workflow.defn
async def gives_up(tag: str) -> dict[str, Any]:
    try:
        await workflow.execute_local_activity(flaky, tag, 99, start_to_close_timeout=5,
                                              retry_policy=_policy(maximum_attempts=3))
    except ActivityError as exc:
        return {"type": exc.cause.type, "message": exc.cause.message, "attempts": exc.attempts,
                "retry_state": exc.retry_state}
    return {}


@workflow.defn
async def times_out() -> dict[str, Any]:
    try:
        await workflow.execute_local_activity(slow, 3.0, start_to_close_timeout=0.2,
                                              retry_policy=RetryPolicy(maximum_attempts=2))
    except ActivityError as exc:
        return {"type": exc.cause.type, "attempts": exc.attempts}
    return {}


@workflow.defn
async def mixed(tag: str) -> list[Any]:
    a = await workflow.execute_local_activity(tiny, tag, 1, start_to_close_timeout=5)
    b = await workflow.execute_activity(tiny, tag, 2, start_to_close_timeout=5)
    await workflow.sleep(0.05)
    c = await workflow.execute_local_activity(tiny, tag, 3, start_to_close_timeout=5)
    return [a, b, c]


@workflow.defn
async def after_an_activity(tag: str) -> list[int]:
    out = []
    for n in range(3):
        out.append(await workflow.execute_activity(tiny, tag, n, start_to_close_timeout=5))
        out.append(await workflow.execute_local_activity(tiny, tag, 10 + n, start_to_close_timeout=5))
    return out


def _markers(sql: Any, run_id: str) -> list[dict[str, Any]]:
    return [d for _, t, d in events(sql, run_id) if t == "MarkerRecorded" and d.get("kind") == "local_activity"]


async def test_local_activities_run_in_the_workflow_task_without_activity_rows(client, start_worker, sql):
    tag = uuid.uuid4().hex
    await start_worker(workflows=[many_tiny], activities=[tiny])
    handle = await client.start(many_tiny, tag, 5, id=f"la-{tag}")
    assert await handle.result(timeout=20) == 20
    evs = events(sql, handle.run_id)
    # One workflow task: the markers and the completion were recorded together.
    assert [t for _, t, _ in evs] == ["WorkflowStarted", "WorkflowTaskStarted", *["MarkerRecorded"] * 5,
                                      "WorkflowCompleted"]
    markers = _markers(sql, handle.run_id)
    assert [(m["local_seq"], m["activity_type"], m["result"], m["attempts"]) for m in markers] == [
        (1, "tiny", 0, 1), (2, "tiny", 2, 1), (3, "tiny", 4, 1), (4, "tiny", 6, 1), (5, "tiny", 8, 1)]
    assert [c["seq"] for c in _calls[tag]] == [1, 2, 3, 4, 5]
    assert all(c["local"] for c in _calls[tag])
    assert _calls[tag][0]["key"] == f"la-{tag}/{handle.run_id}/local/1"
    assert sql("SELECT count(*) FROM cairn.activity_tasks") == [(0,)]


async def test_short_backoffs_retry_inside_the_task(client, start_worker, sql):
    tag = uuid.uuid4().hex
    await start_worker(workflows=[retried_locally], activities=[flaky])
    handle = await client.start(retried_locally, tag, 2, 1.0, id=f"la-{tag}")
    assert await handle.result(timeout=20) == "ok after 3"
    [marker] = _markers(sql, handle.run_id)
    assert marker["attempts"] == 3
    assert "backoff" not in marker
    calls = _calls[tag]
    assert calls[1]["time"] - calls[0]["time"] >= 0.05 - 0.005
    assert calls[2]["time"] - calls[1]["time"] >= 0.1 - 0.005
    assert "TimerStarted" not in [t for _, t, _ in events(sql, handle.run_id)]


async def test_backoffs_over_the_threshold_wait_for_a_durable_timer(client, start_worker, sql):
    tag = uuid.uuid4().hex
    await start_worker(workflows=[retried_locally], activities=[flaky])
    handle = await client.start(retried_locally, tag, 2, 0.0, id=f"la-{tag}")
    assert await handle.result(timeout=20) == "ok after 3"
    markers = _markers(sql, handle.run_id)
    assert [(m["attempts"], "backoff" in m, m.get("result")) for m in markers] == [
        (1, True, None), (2, True, None), (3, False, "ok after 3")]
    assert markers[0]["failure"]["type"] == "ConnectionError"
    types = [t for _, t, _ in events(sql, handle.run_id)]
    assert types.count("TimerStarted") == 2
    assert types.count("TimerFired") == 2
    assert types.count("WorkflowTaskStarted") == 3


async def test_a_final_failure_is_an_activity_error_and_timeouts_apply(client, start_worker, sql):
    tag = uuid.uuid4().hex
    await start_worker(workflows=[gives_up, times_out], activities=[flaky, slow])
    handle = await client.start(gives_up, tag, id=f"la-{tag}")
    assert await handle.result(timeout=20) == {"type": "ConnectionError", "message": "flaky attempt 3",
                                               "attempts": 3, "retry_state": "maximum_attempts_reached"}
    assert len(_calls[tag]) == 3
    began = time.monotonic()
    handle = await client.start(times_out, id=f"la-timeout-{tag}")
    assert await handle.result(timeout=20) == {"type": "StartToCloseTimeout", "attempts": 2}
    assert time.monotonic() - began < 2.5


async def test_local_and_normal_activities_and_timers_mix_and_replay_after_eviction(client, start_worker, sql):
    tags = [uuid.uuid4().hex for _ in range(3)]
    # Started before the worker, with a cache of one: the runs' tasks interleave and replay
    # their histories, markers included, running no local activity again.
    handles = [await client.start(mixed, tag, id=f"la-{tag}") for tag in tags]
    worker = await start_worker(workflows=[mixed], activities=[tiny], cache_size=1)
    for tag, handle in zip(tags, handles, strict=True):
        assert await handle.result(timeout=20) == [2, 4, 6]
        assert len(_calls[tag]) == 3
        assert [m["local_seq"] for m in _markers(sql, handle.run_id)] == [1, 2]
        assert run_status(sql, handle.run_id) == "completed"
    assert worker.stats.cache_misses > 3
    assert worker.stats.workflow_task_failures == 0


async def test_an_unregistered_local_activity_fails_the_task_not_the_run(client, start_worker, sql):
    tag = uuid.uuid4().hex
    await start_worker(workflows=[many_tiny], activities=[flaky])
    handle = await client.start(many_tiny, tag, 1, id=f"la-{tag}")
    for _ in range(100):
        rows = sql("SELECT failures, last_error->>'message' FROM cairn.workflow_tasks WHERE run_id = %s",
                   (handle.run_id,))
        if rows and rows[0][0]:
            break
        await asyncio.sleep(0.05)
    assert "'tiny' is not registered on this worker" in rows[0][1]
    assert run_status(sql, handle.run_id) == "running"
    assert [t for _, t, _ in events(sql, handle.run_id)] == ["WorkflowStarted"]


async def test_the_readme_example_works_as_typed(client, start_worker):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Local activities"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n\n")]
    namespace: dict[str, Any] = {}
    exec("from datetime import timedelta\nfrom cairn import RetryPolicy, activity, workflow\n" + code, namespace)
    await start_worker(workflows=[namespace["greet"]], activities=[namespace["compose_greeting"]])
    handle = await client.start(namespace["greet"], "Ada", id=f"la-readme-{uuid.uuid4().hex}")
    assert await handle.result(timeout=20) == "Hello, Ada!"


async def test_a_local_activity_right_after_an_activity_outcome(client, start_worker, sql):
    """The outcome's fast path cannot run local activities: it hands the task to the
    locked way, which does; each runs once."""
    tag = uuid.uuid4().hex
    worker = await start_worker(workflows=[after_an_activity], activities=[tiny])
    handle = await client.start(after_an_activity, tag, id=f"la-{tag}")
    assert await handle.result(timeout=20) == [0, 20, 2, 22, 4, 24]
    assert sorted(c["local"] for c in _calls[tag]) == [False] * 3 + [True] * 3
    assert [m["local_seq"] for m in _markers(sql, handle.run_id)] == [1, 2, 3]
    assert worker.stats.workflow_task_failures == 0


async def test_verify_replays_local_activities_and_catches_a_second_final_marker(client, start_worker, sql, db_url):
    tag = uuid.uuid4().hex
    await start_worker(workflows=[many_tiny, retried_locally], activities=[tiny, flaky])
    handle = await client.start(many_tiny, tag, 3, id=f"la-{tag}")
    assert await handle.result(timeout=20) == 6
    retried = await client.start(retried_locally, tag, 1, 0.0, id=f"la-retried-{tag}")  # a backoff marker
    assert await retried.result(timeout=20) == "ok after 2"
    report = await verify(db_url, workflows=[many_tiny, retried_locally])
    assert report.violations == []
    # A local activity recorded twice (what a run that re-ran a committed one would show).
    [(last, data)] = sql("SELECT seq, data FROM cairn.history WHERE run_id = %s AND type = 'MarkerRecorded' "
                         "ORDER BY seq DESC LIMIT 1", (handle.run_id,))
    sql("INSERT INTO cairn.history (run_id, seq, type, data) VALUES (%s, %s, 'MarkerRecorded', %s)",
        (handle.run_id, 100, Jsonb(data)))
    report = await verify(db_url)
    [v] = [v for v in report.violations if v.invariant == "local_activity.double_outcome"]
    assert (v.run_id, v.detail) == (handle.run_id, f"local activity 3 has 2 final markers: MarkerRecorded@{last}, "
                                                   "MarkerRecorded@100")
