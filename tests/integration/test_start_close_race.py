"""A start whose id reuse policy reads closed runs serialises with a close of the id's open
run that is in flight (issue 15, A1; the chaos suite's ambiguous-commit scenario hit it).

The close is held open in a transaction; the start must wait for it (seen in
pg_stat_activity, not slept for) and then apply the policy to the closed run, instead of
slipping a second run in once the close commits."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from cairn import workflow
from cairn.errors import WorkflowIdReuseRefused
from support import wait_until


@workflow.defn
async def parked() -> None:
    await workflow.sleep(3600)


async def test_reject_duplicate_start_waits_for_a_close_in_flight(client, db_url, sql):
    first = await client.start(parked, id="race-1")
    async with await psycopg.AsyncConnection.connect(db_url) as closer:
        # A worker closing the run: its transaction holds the run's row until it commits.
        await closer.execute("UPDATE cairn.runs SET status = 'completed', closed_at = now() WHERE run_id = %s",
                             (first.run_id,))
        start = asyncio.create_task(client.start(parked, id="race-1", id_reuse_policy="reject_duplicate"))

        def waiting() -> bool:
            return sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")[0][0] > 0

        await wait_until(waiting, what="the start to wait for the close's row lock")
        await closer.commit()
    with pytest.raises(WorkflowIdReuseRefused):
        await start
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'race-1'") == [(1,)]
