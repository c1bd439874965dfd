"""An activity whose result cannot be recorded (NaN is not JSON) must fail as such, not
look like a dead worker."""

from __future__ import annotations

import asyncio

import flows
import pytest
from acceptance_support import history, run_status

from cairn import Client
from support import wait_for

pytestmark = pytest.mark.acceptance


def test_unrecordable_activity_result_fails_with_its_cause(workers, db_url):
    w = workers("w")

    async def start() -> None:
        async with await Client.connect(db_url) as client:
            await client.start(flows.nan_result, id="nan-1")

    asyncio.run(start())
    wait_for("the run to close", lambda: run_status(db_url, "nan-1") != "running", procs=(w,))
    assert run_status(db_url, "nan-1") == "failed"
    failed = [d for _, t, d, _ in history(db_url, "nan-1") if t == "ActivityFailed"]
    assert len(failed) == 1
    # The attempt's failure names the real cause. (Found: the result write raises inside the
    # worker, the lease lapses, and the attempt is recorded as "WorkerLost".)
    assert failed[0]["failure"]["type"] != "WorkerLost", failed[0]
    assert "Traceback" not in w.log()
