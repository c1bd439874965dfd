"""Activity retries: backoff until success, exhaustion, non-retryable errors; exactly one
recorded outcome per activity."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from cairn import ActivityError, ApplicationError, RetryPolicy, WorkflowFailure, activity, workflow
from support import events, outcomes_per_activity, run_status

# Record attempt start and failure times in-process, per test tag.
_starts: dict[str, list[float]] = {}
_fails: dict[str, list[float]] = {}


def _policy(**kw: Any) -> RetryPolicy:
    kw.setdefault("initial_interval", timedelta(seconds=0.1))
    kw.setdefault("backoff_coefficient", 2.0)
    kw.setdefault("jitter", 0.0)
    return RetryPolicy(**kw)


@activity.defn
async def fails_then_succeeds(tag: str, failures: int) -> dict[str, Any]:
    i = activity.info()
    _starts.setdefault(tag, []).append(time.monotonic())
    if i.attempt <= failures:
        _fails.setdefault(tag, []).append(time.monotonic())
        raise ConnectionError(f"{tag}: transient failure on attempt {i.attempt}")
    return {"attempt": i.attempt}


@activity.defn
async def always_fails(tag: str, kind: str) -> str:
    i = activity.info()
    _starts.setdefault(tag, []).append(time.monotonic())
    if kind == "value":
        raise ValueError(f"bad value on attempt {i.attempt}")
    if kind == "app-non-retryable":
        raise ApplicationError("permanently broken", type="Permanent", non_retryable=True)
    if kind == "app-retryable":
        raise ApplicationError(f"try again ({i.attempt})", type="Busy")
    raise RuntimeError(f"boom on attempt {i.attempt}")


@workflow.defn
async def retry_until_success(tag: str, failures: int) -> dict[str, Any]:
    return await workflow.execute_activity(
        fails_then_succeeds, tag, failures, start_to_close_timeout=10,
        retry_policy=_policy(maximum_attempts=10))


@workflow.defn
async def catch_exhaustion(tag: str, kind: str, max_attempts: int,
                           non_retryable_types: list[str]) -> dict[str, Any]:
    policy = _policy(maximum_attempts=max_attempts, non_retryable_error_types=tuple(non_retryable_types))
    try:
        await workflow.execute_activity(always_fails, tag, kind, start_to_close_timeout=10,
                                        retry_policy=policy)
    except ActivityError as e:
        return {"caught": True, "type": e.type, "cause_type": e.cause.type,
                "cause_message": e.cause.message, "attempts": e.attempts, "retry_state": e.retry_state}
    return {"caught": False}


@workflow.defn
async def uncaught_exhaustion(tag: str) -> str:
    await workflow.execute_activity(always_fails, tag, "runtime", start_to_close_timeout=10,
                                    retry_policy=_policy(maximum_attempts=3))
    return "unreachable"


async def test_retries_with_backoff_until_success(client, start_worker, sql):
    await start_worker(workflows=[retry_until_success], activities=[fails_then_succeeds])
    handle = await client.start(retry_until_success, "succeed", 2, id="retry-ok")
    assert await handle.result(timeout=20) == {"attempt": 3}

    starts, fails = _starts["succeed"], _fails["succeed"]
    assert len(starts) == 3
    assert len(fails) == 2
    # Delay before attempt n+1 is initial * coefficient ** (n-1) (no jitter): 0.1 s, then 0.2 s.
    # Lower bounds only (5 ms of slack for clock granularity between us and the database).
    assert starts[1] - fails[0] >= 0.1 - 0.005
    assert starts[2] - fails[1] >= 0.2 - 0.005

    evs = events(sql, handle.run_id)
    completed = [d for _, t, d in evs if t == "ActivityCompleted"]
    assert len(completed) == 1
    assert completed[0]["attempt"] == 3
    assert completed[0]["result"] == {"attempt": 3}
    assert not [t for _, t, _ in evs if t == "ActivityFailed"]
    assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}
    assert sql("SELECT count(*) FROM cairn.activity_tasks") == [(0,)]


async def test_retry_backoff_respects_maximum_interval(client, start_worker):
    """initial 0.1, coefficient 10, capped at 0.3: delays 0.1, 0.3, 0.3 (not 1.0, 10.0)."""

    await start_worker(workflows=[capped_retries], activities=[fails_then_succeeds])
    handle = await client.start(capped_retries, "capped", id="retry-capped")
    assert await handle.result(timeout=20) == {"attempt": 4}
    starts, fails = _starts["capped"], _fails["capped"]
    gaps = [s - f for s, f in zip(starts[1:], fails, strict=True)]
    assert gaps[0] >= 0.1 - 0.005
    assert gaps[1] >= 0.3 - 0.005
    assert gaps[2] >= 0.3 - 0.005
    # The cap does apply: the third delay would be 10 s uncapped. (A loose upper bound.)
    assert gaps[2] < 5.0


@workflow.defn
async def capped_retries(tag: str) -> dict[str, Any]:
    policy = _policy(backoff_coefficient=10.0, maximum_interval=timedelta(seconds=0.3), maximum_attempts=10)
    return await workflow.execute_activity(fails_then_succeeds, tag, 3, start_to_close_timeout=10,
                                           retry_policy=policy)


async def test_exhaustion_is_caught_by_workflow(client, start_worker, sql):
    await start_worker(workflows=[catch_exhaustion], activities=[always_fails])
    handle = await client.start(catch_exhaustion, "exhaust", "runtime", 3, [], id="retry-exhaust")
    out = await handle.result(timeout=20)
    assert out == {"caught": True, "type": "ActivityError", "cause_type": "RuntimeError",
                   "cause_message": "boom on attempt 3", "attempts": 3, "retry_state": "maximum_attempts"}
    assert len(_starts["exhaust"]) == 3
    assert run_status(sql, handle.run_id) == "completed"
    evs = events(sql, handle.run_id)
    failed = [d for _, t, d in evs if t == "ActivityFailed"]
    assert len(failed) == 1
    assert failed[0]["attempts"] == 3
    assert failed[0]["retry_state"] == "maximum_attempts"
    assert failed[0]["failure"]["type"] == "RuntimeError"
    assert failed[0]["failure"]["message"] == "boom on attempt 3"
    assert not [t for _, t, _ in evs if t == "ActivityCompleted"]
    assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}


async def test_uncaught_exhaustion_fails_the_run(client, start_worker, sql):
    await start_worker(workflows=[uncaught_exhaustion], activities=[always_fails])
    handle = await client.start(uncaught_exhaustion, "uncaught", id="retry-uncaught")
    with pytest.raises(WorkflowFailure) as info:
        await handle.result(timeout=20)
    assert info.value.type == "ActivityError"
    assert "RuntimeError" in info.value.message
    assert "boom on attempt 3" in info.value.message
    assert len(_starts["uncaught"]) == 3

    rows = sql("SELECT status, failure, closed_at IS NOT NULL FROM cairn.runs WHERE run_id = %s",
               (handle.run_id,))
    status, failure, closed = rows[0]
    assert (status, closed) == ("failed", True)
    assert failure["type"] == "ActivityError"
    evs = events(sql, handle.run_id)
    assert evs[-1][1] == "WorkflowFailed"
    assert evs[-1][2]["failure"]["type"] == "ActivityError"
    assert evs[-1][2]["failure"]["details"]["type"] == "RuntimeError"
    assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}
    for table in ("workflow_tasks", "activity_tasks", "timers", "inbox"):
        assert sql(f"SELECT count(*) FROM cairn.{table}") == [(0,)], table


NON_RETRYABLE_CASES = [
    ("value", ["ValueError"], "ValueError"),          # listed in non_retryable_error_types
    ("app-non-retryable", [], "Permanent"),           # ApplicationError(non_retryable=True)
    ("app-retryable", ["Busy"], "Busy"),              # ApplicationError type listed in policy
]


async def test_non_retryable_errors_stop_after_one_attempt(client, start_worker, sql):
    await start_worker(workflows=[catch_exhaustion], activities=[always_fails])
    handles = {kind: await client.start(catch_exhaustion, f"nonretry-{kind}", kind, 10, types,
                                        id=f"nonretry-{kind}")
               for kind, types, _ in NON_RETRYABLE_CASES}
    for kind, _, cause_type in NON_RETRYABLE_CASES:
        handle = handles[kind]
        out = await handle.result(timeout=20)
        assert out["caught"] is True, kind
        assert out["cause_type"] == cause_type
        assert out["attempts"] == 1, kind
        assert out["retry_state"] == "non_retryable", kind
        assert len(_starts[f"nonretry-{kind}"]) == 1, kind
        failed = [d for _, t, d in events(sql, handle.run_id) if t == "ActivityFailed"]
        assert len(failed) == 1, kind
        assert failed[0]["attempts"] == 1, kind
        assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}, kind


@activity.defn
async def typed_activity(n: int) -> int:
    _starts.setdefault("typed", []).append(time.monotonic())
    return n


@workflow.defn
async def call_by_name_with_bad_input() -> dict[str, Any]:
    try:
        # By name, so the workflow side cannot validate; the worker rejects the input.
        await workflow.execute_activity("typed_activity", "not a number", start_to_close_timeout=10,
                                        retry_policy=_policy(maximum_attempts=5))
    except ActivityError as e:
        return {"cause_type": e.cause.type, "attempts": e.attempts, "retry_state": e.retry_state}
    return {}


async def test_invalid_activity_input_is_not_retried(client, start_worker, sql):
    await start_worker(workflows=[call_by_name_with_bad_input], activities=[typed_activity])
    handle = await client.start(call_by_name_with_bad_input, id="bad-input")
    out = await handle.result(timeout=20)
    assert out == {"cause_type": "InputValidationError", "attempts": 1, "retry_state": "non_retryable"}
    assert "typed" not in _starts  # the function body never ran
    assert set(outcomes_per_activity(sql, handle.run_id).values()) == {1}
