"""A message scheduler: send a message at a local time, durably, exactly once.

- The app converts the wall-clock time in the recipient's zone (``zoneinfo``) to UTC and
  stores it in UTC, with the message row, in the same transaction as the workflow's start.
- The workflow sleeps on a durable timer until then (a worker restart changes nothing).
- The SMS gateway is flaky: three retries, five minutes apart (fifteen minutes in all).
  Every attempt passes the same idempotency key, and the gateway keeps one delivery per
  key, so an attempt that sent the message but lost the answer is never sent twice.
- When every attempt failed, the message is marked ``failed`` and an alert row is written
  (and the run fails, so ``cairn list --status failed`` shows it): failure is reported,
  never silent.

Run it: ``python examples/message_scheduler.py`` (embedded Postgres, or
``CAIRN_DATABASE_URL`` after ``cairn db migrate``). It schedules two messages a few seconds
ahead with one-second retries: one the gateway delivers after a lost answer, one it never
delivers.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from pydantic import BaseModel

from cairn import (
    ActivityError,
    ApplicationError,
    Client,
    RetryPolicy,
    Worker,
    WorkflowFailure,
    WorkflowHandle,
    activity,
    workflow,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id text PRIMARY KEY, recipient text NOT NULL, body text NOT NULL,
    local_time text NOT NULL, zone text NOT NULL,
    send_at timestamptz NOT NULL,                  -- the UTC instant the local time names
    status text NOT NULL DEFAULT 'scheduled', detail text);
CREATE TABLE IF NOT EXISTS deliveries (              -- the gateway's side: one row per message sent
    idempotency_key text PRIMARY KEY, message_id text NOT NULL, sent_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS gateway_calls (           -- every attempt, for the curious
    message_id text NOT NULL, attempt int NOT NULL, outcome text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS alerts (
    message_id text PRIMARY KEY, reason text NOT NULL, at timestamptz NOT NULL DEFAULT now());
"""


class Message(BaseModel):
    id: str
    recipient: str
    body: str
    send_at: datetime                              # UTC
    retry_every: timedelta = timedelta(minutes=5)  # 3 retries: 5, 10 and 15 minutes after the first try
    gateway_faults: list[str] = []                 # the simulated gateway's behaviour per attempt


def to_utc(local_time: str, zone: str) -> datetime:
    """``"2025-03-31 09:00"`` in ``"Europe/Paris"`` -> the UTC instant (07:00 UTC, summer time)."""
    return datetime.fromisoformat(local_time).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def app_db() -> str:
    return os.environ["CAIRN_DATABASE_URL"]


# ---------------------------------------------------------------- activities


@activity.defn
async def send_sms(msg: Message) -> str:
    """Calls the (simulated) SMS gateway with the attempt's idempotency key."""
    info = activity.info()
    fault = msg.gateway_faults[info.attempt - 1] if info.attempt <= len(msg.gateway_faults) else "ok"
    async with await psycopg.AsyncConnection.connect(app_db(), autocommit=True) as conn:
        await conn.execute("INSERT INTO gateway_calls (message_id, attempt, outcome) VALUES (%s, %s, %s)",
                           (msg.id, info.attempt, fault))
        if fault == "down":
            raise ApplicationError("gateway answered 503", type="GatewayUnavailable")
        # The gateway keeps one delivery per idempotency key: a retry re-sends nothing.
        await conn.execute("INSERT INTO deliveries (idempotency_key, message_id) VALUES (%s, %s) "
                           "ON CONFLICT (idempotency_key) DO NOTHING", (info.idempotency_key, msg.id))
        if fault == "lost_answer":  # sent, but the answer never came back
            raise ApplicationError("no answer from the gateway within 10 s", type="GatewayTimeout")
    return info.idempotency_key


@activity.defn
async def record_outcome(message_id: str, status: str, detail: str) -> None:
    async with await psycopg.AsyncConnection.connect(app_db(), autocommit=True) as conn:
        await conn.execute("UPDATE messages SET status = %s, detail = %s WHERE id = %s", (status, detail, message_id))
        if status == "failed":
            await conn.execute("INSERT INTO alerts (message_id, reason) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                               (message_id, detail))


# ---------------------------------------------------------------- the workflow


@workflow.defn
async def scheduled_message(msg: Message) -> str:
    await workflow.sleep(max(msg.send_at - workflow.now(), timedelta(0)))  # a durable timer
    retries = RetryPolicy(initial_interval=msg.retry_every, backoff_coefficient=1.0, maximum_attempts=4)
    try:
        key = await workflow.execute_activity(send_sms, msg, start_to_close_timeout=30, retry_policy=retries)
    except ActivityError as exc:
        reason = f"not delivered after {exc.attempts} attempts: {exc.cause.message}"
        await workflow.execute_activity(record_outcome, msg.id, "failed", reason, start_to_close_timeout=30)
        raise ApplicationError(reason, type="MessageNotDelivered", non_retryable=True) from None
    await workflow.execute_activity(record_outcome, msg.id, "sent", key, start_to_close_timeout=30)
    return key


# ---------------------------------------------------------------- the app


async def schedule(client: Client, conn: psycopg.AsyncConnection, recipient: str, body: str, local_time: str,
                   zone: str, **options: object) -> WorkflowHandle:
    """Stores the message (in UTC) and starts its workflow, in one transaction."""
    msg = Message(id=f"msg-{uuid.uuid4().hex[:8]}", recipient=recipient, body=body,
                  send_at=to_utc(local_time, zone), **options)  # type: ignore[arg-type]
    async with conn.transaction():
        await conn.execute("INSERT INTO messages (id, recipient, body, local_time, zone, send_at) "
                           "VALUES (%s, %s, %s, %s, %s, %s)", (msg.id, recipient, body, local_time, zone, msg.send_at))
        return await client.start(scheduled_message, msg, id=msg.id, conn=conn)


async def main() -> None:
    async with await Client.connect() as client:
        os.environ.setdefault("CAIRN_DATABASE_URL", client.url)  # where the activities find the app's tables
        async with await psycopg.AsyncConnection.connect(client.url) as conn, \
                Worker(client.url, workflows=[scheduled_message], activities=[send_sms, record_outcome]):
            await conn.execute(SCHEMA)
            await conn.commit()
            zone = "America/New_York"
            soon = datetime.now(ZoneInfo(zone)) + timedelta(seconds=3)
            local = soon.strftime("%Y-%m-%d %H:%M:%S")
            fast = {"retry_every": timedelta(seconds=1)}
            ok = await schedule(client, conn, "+15550100", "Your table is ready", local, zone,
                                gateway_faults=["down", "lost_answer"], **fast)
            bad = await schedule(client, conn, "+15550101", "Your order shipped", local, zone,
                                 gateway_faults=["down"] * 4, **fast)
            print(f"scheduled {ok.workflow_id} and {bad.workflow_id} for {local} {zone} = {to_utc(local, zone)} UTC")
            print(f"{ok.workflow_id}: delivered with key {await ok.result(timeout=60)}")
            try:
                await bad.result(timeout=60)
            except WorkflowFailure as exc:
                print(f"{bad.workflow_id}: {exc}")
            for row in await (await conn.execute(
                    "SELECT m.id, m.status, count(d.*) FROM messages m LEFT JOIN deliveries d ON d.message_id = m.id "
                    "WHERE m.id IN (%s, %s) GROUP BY m.id, m.status", (ok.workflow_id, bad.workflow_id))).fetchall():
                print(f"  {row[0]}: status {row[1]}, {row[2]} delivery(ies)")


if __name__ == "__main__":
    asyncio.run(main())
