"""examples/message_scheduler.py end to end: a local time stored and slept until in UTC,
retries against a flaky gateway that never deliver twice, and a final failure reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import message_scheduler as ex
import psycopg
import pytest

from cairn import WorkflowFailure

FAST = {"retry_every": timedelta(seconds=0.2)}  # the example's 5 minutes, shortened


def test_local_times_are_stored_in_utc():
    assert ex.to_utc("2025-07-01 09:00", "America/New_York") == datetime(2025, 7, 1, 13, 0, tzinfo=UTC)
    assert ex.to_utc("2025-01-15 09:00", "Europe/Paris") == datetime(2025, 1, 15, 8, 0, tzinfo=UTC)


async def test_messages_go_out_once_at_their_time_or_fail_loudly(client, start_worker, db_url, sql, monkeypatch):
    monkeypatch.setenv("CAIRN_DATABASE_URL", db_url)
    await start_worker(workflows=[ex.scheduled_message], activities=[ex.send_sms, ex.record_outcome])
    zone = "Asia/Tokyo"
    local = (datetime.now(ZoneInfo(zone)) + timedelta(seconds=2)).strftime("%Y-%m-%d %H:%M:%S")
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await conn.execute(ex.SCHEMA)
        await conn.commit()
        flaky = await ex.schedule(client, conn, "+81", "hi", local, zone,
                                  gateway_faults=["down", "lost_answer", "lost_answer"], **FAST)
        clean = await ex.schedule(client, conn, "+82", "hello", local, zone, **FAST)
        dead = await ex.schedule(client, conn, "+83", "lost", local, zone, gateway_faults=["down"] * 4, **FAST)
        assert await flaky.result(timeout=30) == await flaky.result(timeout=1)
        await clean.result(timeout=30)
        with pytest.raises(WorkflowFailure, match="not delivered after 4 attempts: gateway answered 503"):
            await dead.result(timeout=30)

    due = ex.to_utc(local, zone)
    assert sql("SELECT DISTINCT send_at FROM messages") == [(due,)], "stored in UTC"
    # Nothing was sent before its time, and each message sent at most once per key.
    deliveries = dict(sql("SELECT message_id, count(*) FROM deliveries GROUP BY message_id"))
    assert deliveries == {flaky.workflow_id: 1, clean.workflow_id: 1}, "a retry never sent twice"
    assert all(at >= due for (at,) in sql("SELECT sent_at FROM deliveries"))
    calls = sql("SELECT message_id, attempt, outcome FROM gateway_calls ORDER BY message_id, attempt")
    assert [(a, o) for m, a, o in calls if m == flaky.workflow_id] == [
        (1, "down"), (2, "lost_answer"), (3, "lost_answer"), (4, "ok")]
    assert [a for m, a, _ in calls if m == dead.workflow_id] == [1, 2, 3, 4], "three retries, then given up"
    statuses = dict(sql("SELECT id, status FROM messages"))
    assert statuses == {flaky.workflow_id: "sent", clean.workflow_id: "sent", dead.workflow_id: "failed"}
    assert sql("SELECT message_id, reason FROM alerts") == [
        (dead.workflow_id, "not delivered after 4 attempts: gateway answered 503")]
    assert sql("SELECT status FROM cairn.runs WHERE workflow_id = %s", (dead.workflow_id,)) == [("failed",)]
    # The timer: the run slept until the UTC instant the local time names, then sent.
    history = await flaky.history()
    [fired] = [e for e in history if e.type == "TimerFired"]
    assert fired.at >= due
    assert [e.type for e in history].index("TimerFired") < [e.type for e in history].index("ActivityScheduled")
