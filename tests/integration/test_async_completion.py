"""Asynchronous activity completion: an activity hands out its task token and returns
without a result (activity.raise_complete_async()); an outside system completes, fails or
heartbeats the attempt by that token. Timeouts still apply; a stale token writes nothing."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import pytest

from cairn import (
    ActivityError,
    AsyncActivityCancelled,
    Client,
    InputValidationError,
    RetryPolicy,
    StaleTaskToken,
    activity,
    workflow,
)
from cairn.store import roles
from cairn.sync import SyncClient
from support import bad_input, cairn_in_thread, events, ok, running_worker, wait_until

from .test_security import as_role, attempt, role_set

FAST_RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.05), backoff_coefficient=1.0, jitter=0.0,
                         maximum_attempts=2)

# Task tokens handed out by the activities, per test key, in attempt order.
tokens: dict[str, list[str]] = {}


@activity.defn
async def hand_out(key: str) -> Any:
    tokens.setdefault(key, []).append(activity.info().task_token)
    activity.raise_complete_async()


@activity.defn
def hand_out_in_thread(key: str) -> str:
    tokens.setdefault(key, []).append(activity.info().task_token)
    # CompleteAsync is a BaseException: this must not swallow it.
    with contextlib.suppress(Exception):
        activity.raise_complete_async()
    return "returned instead"


@workflow.defn
async def waits_outside(key: str, heartbeat: float | None = None, start_to_close: float = 30.0) -> Any:
    try:
        result = await workflow.execute_activity(
            hand_out, key, start_to_close_timeout=start_to_close, heartbeat_timeout=heartbeat,
            retry_policy=FAST_RETRY)
    except ActivityError as exc:
        return {"error": exc.cause.type if exc.cause else None, "attempts": exc.attempts,
                "retry_state": exc.retry_state}
    await workflow.wait_signal("finish")
    return result


@workflow.defn
async def waits_outside_thread(key: str) -> Any:
    return await workflow.execute_activity(hand_out_in_thread, key, start_to_close_timeout=30)


async def _token(key: str, n: int = 1) -> str:
    await wait_until(lambda: len(tokens.get(key, [])) >= n, timeout=15, what=f"attempt {n}'s token")
    return tokens[key][n - 1]


def _detached(sql: Any, run_id: str) -> bool:
    rows = sql("SELECT lease_owner, lease_expires_at = attempt_deadline FROM cairn.activity_tasks "
               "WHERE run_id = %s", (run_id,))
    return bool(rows) and rows[0][0].startswith("async:") and rows[0][1]


async def test_complete_by_token_delivers_the_result_once(client, start_worker, sql):
    await start_worker(workflows=[waits_outside], activities=[hand_out])
    handle = await client.start(waits_outside, "complete", id="async-complete")
    token = await _token("complete")
    assert token.startswith("cairn1.")
    assert handle.run_id not in token
    await wait_until(lambda: _detached(sql, handle.run_id), what="the attempt to leave its worker")
    await client.heartbeat_activity(token, {"progress": 1})
    assert sql("SELECT heartbeat_details FROM cairn.activity_tasks")[0][0] == {"progress": 1}
    await client.complete_activity(token, {"greeting": "hi"})
    # The activity has its outcome: the same token again is refused and writes nothing.
    await wait_until(lambda: any(t == "ActivityCompleted" for _, t, _ in events(sql, handle.run_id)))
    with pytest.raises(StaleTaskToken) as again:
        await client.complete_activity(token, "twice")
    assert again.value.reason == "done"
    with pytest.raises(StaleTaskToken):
        await client.get_async_activity_handle(token).heartbeat()
    await handle.signal("finish")
    assert await handle.result(timeout=20) == {"greeting": "hi"}
    with pytest.raises(StaleTaskToken) as closed:
        await client.fail_activity(token, "late")
    assert closed.value.reason == "run_closed"
    completed = [d for _, t, d in events(sql, handle.run_id) if t == "ActivityCompleted"]
    assert completed == [{"activity_seq": 3, "result": {"greeting": "hi"}, "attempt": 1}]


async def test_a_thread_activity_completes_async_too(client, start_worker):
    await start_worker(workflows=[waits_outside_thread], activities=[hand_out_in_thread])
    handle = await client.start(waits_outside_thread, "thread", id="async-thread")
    handle2 = client.get_async_activity_handle(await _token("thread"))
    await handle2.complete("from outside")
    assert await handle.result(timeout=20) == "from outside"


async def test_fail_retries_per_policy_and_supersedes_the_token(client, start_worker, sql):
    await start_worker(workflows=[waits_outside], activities=[hand_out])
    handle = await client.start(waits_outside, "fail", id="async-fail")
    first = await _token("fail")
    assert await client.fail_activity(first, "the outside system broke") == "retrying"
    second = await _token("fail", 2)
    assert second != first
    with pytest.raises(StaleTaskToken) as stale:
        await client.complete_activity(first, "too late")
    assert stale.value.reason == "superseded"
    assert await client.fail_activity(second, ValueError("still broken")) == "failed"
    assert await handle.result(timeout=20) == {"error": "ValueError", "attempts": 2,
                                               "retry_state": "maximum_attempts"}
    assert [t for _, t, _ in events(sql, handle.run_id) if t.startswith("Activity")] == [
        "ActivityScheduled", "ActivityFailed"]


async def test_heartbeat_timeout_expires_the_async_attempt(client, start_worker, sql):
    await start_worker(workflows=[waits_outside], activities=[hand_out])
    handle = await client.start(waits_outside, "heartbeat", 1.0, id="async-heartbeat")
    first = await _token("heartbeat")
    for _ in range(3):  # heartbeats keep it alive past its 1 s heartbeat timeout ...
        await client.heartbeat_activity(first)
        await asyncio.sleep(0.5)
    assert len(tokens["heartbeat"]) == 1
    # ... until they stop: the reaper retries it (attempt 2), whose heartbeat lapses too.
    second = await _token("heartbeat", 2)
    assert await handle.result(timeout=20) == {"error": "HeartbeatTimeout", "attempts": 2,
                                               "retry_state": "maximum_attempts"}
    for token in (first, second):
        with pytest.raises(StaleTaskToken):
            await client.complete_activity(token, "after the timeout")


async def test_start_to_close_timeout_applies(client, start_worker):
    await start_worker(workflows=[waits_outside], activities=[hand_out])
    handle = await client.start(waits_outside, "stc", None, 0.5, id="async-stc")
    await _token("stc", 2)
    assert await handle.result(timeout=20) == {"error": "StartToCloseTimeout", "attempts": 2,
                                               "retry_state": "maximum_attempts"}


@workflow.defn
async def waits_outside_briefly(key: str) -> Any:
    try:
        return await workflow.execute_activity(hand_out, key, schedule_to_close_timeout=1.0,
                                               retry_policy=FAST_RETRY)
    except ActivityError as exc:
        return {"error": exc.cause.type if exc.cause else None, "attempts": exc.attempts,
                "retry_state": exc.retry_state}


async def test_schedule_to_close_timeout_applies(client, start_worker):
    await start_worker(workflows=[waits_outside_briefly], activities=[hand_out])
    handle = await client.start(waits_outside_briefly, "s2c", id="async-s2c")
    token = await _token("s2c")
    assert await handle.result(timeout=20) == {"error": "ScheduleToCloseTimeout", "attempts": 1,
                                               "retry_state": "schedule_to_close_timeout"}
    with pytest.raises(StaleTaskToken) as closed:
        await client.complete_activity(token, "too late")
    assert closed.value.reason == "run_closed"


async def test_bad_and_forged_tokens_are_refused(client, start_worker, sql):
    await start_worker(workflows=[waits_outside], activities=[hand_out])
    handle = await client.start(waits_outside, "forged", id="async-forged")
    token = await _token("forged")
    for bad in ("", "nonsense", "cairn1.!!!", "cairn1.AAAA", token[:-3]):
        with pytest.raises(InputValidationError, match="task token"):
            await client.complete_activity(bad, 1)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(InputValidationError, match="signature"):
        await client.complete_activity(forged, 1)
    with pytest.raises(InputValidationError):
        await client.complete_activity(token, float("nan"))  # a result that has no JSON form
    assert sql("SELECT count(*) FROM cairn.inbox")[0][0] == 0
    assert sql("SELECT count(*) FROM cairn.activity_tasks WHERE run_id = %s", (handle.run_id,))[0][0] == 1


@workflow.defn
async def cancels_outside(key: str) -> str:
    h = workflow.start_activity(hand_out, key, start_to_close_timeout=30,
                                cancellation_type="wait_cancellation_completed")
    await workflow.wait_signal("cancel")
    h.cancel()
    try:
        await h
    except asyncio.CancelledError:
        return f"stopped: {h.cancelled()}"
    return "not cancelled"


async def test_heartbeat_learns_of_a_cancel_and_reports_it(client, start_worker, sql):
    await start_worker(workflows=[cancels_outside], activities=[hand_out])
    handle = await client.start(cancels_outside, "cancel", id="async-cancel")
    outside = client.get_async_activity_handle(await _token("cancel"))
    with pytest.raises(InputValidationError, match="not asked to stop"):
        await outside.report_cancellation()
    await handle.signal("cancel")

    async def told() -> bool:
        try:
            await outside.heartbeat()
        except AsyncActivityCancelled:
            return True
        return False

    await wait_until(told, what="the heartbeat to learn of the cancel")
    await outside.report_cancellation()
    assert await handle.result(timeout=20) == "stopped: True"
    assert [t for _, t, _ in events(sql, handle.run_id) if t.startswith("Activity")][-1] == "ActivityCancelled"


async def test_sync_client_and_cli(client, start_worker, db_url, sql):
    await start_worker(workflows=[waits_outside], activities=[hand_out])
    handle = await client.start(waits_outside, "cli", id="async-cli")
    token = await _token("cli")
    out = ok(await cairn_in_thread(db_url, "activity", "heartbeat", token, "--input", '{"step": 2}', "--json"))
    assert '"cancel_requested": false' in out
    bad_input(await cairn_in_thread(db_url, "activity", "complete", "nonsense", "--input", "1"), "task token")
    out = ok(await cairn_in_thread(db_url, "activity", "fail", token, "--message", "nope"))
    assert "retrying" in out
    second = await _token("cli", 2)
    bad_input(await cairn_in_thread(db_url, "activity", "complete", token, "--input", "1"), "earlier attempt")
    with SyncClient(db_url) as sync:
        await asyncio.to_thread(sync.heartbeat_activity, second, "sync")
    ok(await cairn_in_thread(db_url, "activity", "complete", second, "--input", '"by the cli"'))
    await handle.signal("finish")
    assert await handle.result(timeout=20) == "by the cli"


async def test_the_client_role_completes_by_token_and_writes_nothing_else(db_url):
    with role_set(db_url) as names:
        await asyncio.to_thread(roles.create_roles, db_url, roles.RolePlan(names=names))
        worker_url, client_url = as_role(db_url, names["worker"]), as_role(db_url, names["client"])
        async with running_worker(worker_url, workflows=[waits_outside], activities=[hand_out]), \
                await Client.connect(client_url) as client:
            handle = await client.start(waits_outside, "roles", id="async-roles")
            first = await _token("roles")
            await client.heartbeat_activity(first, "beat")
            assert await client.fail_activity(first, "once") == "retrying"
            await client.complete_activity(await _token("roles", 2), "as the client role")
            await handle.signal("finish")
            assert await handle.result(timeout=20) == "as the client role"
        for statement in ("UPDATE cairn.activity_tasks SET input = input", "UPDATE cairn.activity_tasks SET "
                          "attempt = attempt", "UPDATE cairn.activity_token_keys SET key = key",
                          "UPDATE cairn.activity_tasks SET lease_owner = lease_owner"):
            assert attempt(client_url, statement) == "denied", statement
        # Dashboards (the readonly role) cannot read the key that signs tokens.
        assert attempt(as_role(db_url, names["readonly"]), "SELECT key FROM cairn.activity_token_keys") == "denied"
        assert attempt(as_role(db_url, names["readonly"]), "SELECT count(*) FROM cairn.activity_tasks") == "ok"


early: dict[str, Any] = {}  # the test's client, for the activity below


@activity.defn
async def completes_itself_first(key: str) -> Any:
    # The outside system answers before the activity has even returned: the completion
    # stands, and the worker's hand-over to asynchronous completion then finds nothing to do.
    await early["client"].complete_activity(activity.info().task_token, f"early {key}")
    activity.raise_complete_async()


@workflow.defn
async def answered_early(key: str) -> Any:
    return await workflow.execute_activity(completes_itself_first, key, start_to_close_timeout=30)


async def test_a_completion_before_the_activity_returns_stands(client, start_worker, sql):
    early["client"] = client
    await start_worker(workflows=[answered_early], activities=[completes_itself_first])
    handle = await client.start(answered_early, "bird", id="async-early")
    assert await handle.result(timeout=20) == "early bird"
    assert [t for _, t, _ in events(sql, handle.run_id) if t.startswith("Activity")] == [
        "ActivityScheduled", "ActivityCompleted"]
    assert sql("SELECT count(*) FROM cairn.activity_tasks") == [(0,)]
