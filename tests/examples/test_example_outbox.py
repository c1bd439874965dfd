"""examples/transactional_outbox.py end to end: the signup row and the workflow run commit
together; a rolled-back signup leaves neither."""

from __future__ import annotations

import psycopg
import pytest
import transactional_outbox as ex


async def test_signup_and_start_commit_together_and_roll_back_together(client, start_worker, db_url, sql):
    await start_worker(workflows=[ex.welcome], activities=[ex.send_welcome])
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await conn.execute(ex.SCHEMA)
        await conn.commit()
        handle = await ex.sign_up(client, conn, "ann@example.com", "pro")
        assert await handle.result(timeout=20) == "welcome mail sent to ann@example.com"
        with pytest.raises(psycopg.errors.CheckViolation):
            await ex.sign_up(client, conn, "bob@example.com", "platinum")  # refused AFTER the start

    assert sql("SELECT email, plan FROM signups") == [("ann@example.com", "pro")]
    assert sql("SELECT workflow_id, status FROM cairn.runs") == [("welcome-ann@example.com", "completed")]
    assert sql("SELECT count(*) FROM cairn.workflow_tasks") == [(0,)], "no task left of the rolled-back start"
    assert await client.list(where='WorkflowId = "welcome-bob@example.com"') == []
