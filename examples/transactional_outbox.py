"""The transactional outbox: an app writes its own rows and starts a workflow in ONE
Postgres transaction, so either both happen or neither does.

No outbox table, no relay process: `client.start(..., conn=conn)` writes the run on the
app's own connection, inside its transaction. If the transaction rolls back (here a CHECK
constraint refuses the signup's plan, after the start), the run was never started.
`cairn.sync.SyncClient.start(..., conn=conn)` does the same with a sync psycopg connection.

Run it: ``python examples/transactional_outbox.py`` (embedded Postgres, or
``CAIRN_DATABASE_URL`` after ``cairn db migrate``).
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg

from cairn import Client, Worker, WorkflowHandle, activity, workflow

SCHEMA = """
CREATE TABLE IF NOT EXISTS signups (
    email text PRIMARY KEY,
    plan  text NOT NULL CONSTRAINT known_plan CHECK (plan IN ('free', 'pro')),
    at    timestamptz NOT NULL DEFAULT now())
"""


@activity.defn
async def send_welcome(email: str) -> str:
    return f"welcome mail sent to {email}"  # a real app calls its mailer here


@workflow.defn
async def welcome(email: str) -> str:
    return await workflow.execute_activity(send_welcome, email, start_to_close_timeout=30)


async def sign_up(client: Client, conn: psycopg.AsyncConnection, email: str, plan: str) -> WorkflowHandle:
    """The app's signup: its own row and the welcome workflow, committed together."""
    async with conn.transaction():
        handle = await client.start(welcome, email, id=f"welcome-{email}", conn=conn)
        await conn.execute("INSERT INTO signups (email, plan) VALUES (%s, %s)", (email, plan))
    return handle


async def main() -> None:
    async with await Client.connect() as client, Worker(client.url, workflows=[welcome], activities=[send_welcome]), \
            await psycopg.AsyncConnection.connect(client.url) as conn:
        await conn.execute(SCHEMA)
        await conn.commit()
        ann, bob = f"ann-{uuid.uuid4().hex[:6]}@example.com", f"bob-{uuid.uuid4().hex[:6]}@example.com"
        handle = await sign_up(client, conn, ann, "pro")
        print(f"{ann}: signed up; the workflow says {await handle.result(timeout=30)!r}")
        try:
            await sign_up(client, conn, bob, "platinum")
        except psycopg.errors.CheckViolation:
            print(f"{bob}: refused (unknown plan), so no signup row and no workflow run:")
        rows = await (await conn.execute("SELECT count(*) FROM signups WHERE email = %s", (bob,))).fetchone()
        runs = await client.list(where=f'WorkflowId = "welcome-{bob}"')
        print(f"  signups rows: {rows[0] if rows else 0}, runs: {len(runs)}")


if __name__ == "__main__":
    asyncio.run(main())
