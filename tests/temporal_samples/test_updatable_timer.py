"""samples-python updatable_timer/, ported: the worker, the starter (a timer a day away),
the updater (signals a wake-up 10 s from now); the run wakes then and completes. Asserts
what the sample logs, and what its query answers."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from cairn import Client

from . import updatable_timer as sample


async def test_updatable_timer_logs_what_the_sample_logs(db_url, caplog):
    caplog.set_level(logging.INFO)
    interrupt = asyncio.Event()
    worker = asyncio.create_task(sample.worker_main(db_url, interrupt))
    client = await Client.connect(db_url)
    try:
        for _ in range(600):  # the worker logs once it runs
            if "Worker started, ctrl+c to exit" in caplog.messages:
                break
            await asyncio.sleep(0.05)
        await sample.starter_main(client)
        assert re.fullmatch(r"Workflow started: run_id=[0-9a-f-]{36}", caplog.messages[-1])
        await sample.starter_main(client)  # again: already running
        assert caplog.messages[-1].startswith("Workflow already running: workflow_id=updatable-timer-workflow, run_id=")
        handle = client.get_handle("updatable-timer-workflow")
        a_day = time.time() + 86400
        # wait until the first workflow task has run (the query needs its handler)
        assert abs(await handle.query(sample.Workflow.get_wake_up_time, timeout=30) - a_day) < 60

        began = time.monotonic()
        await sample.updater_main(client)
        assert caplog.messages[-1] == "Updated wake up time to 10 seconds from now"
        assert await handle.result(timeout=60) is None
        assert 8 <= time.monotonic() - began < 30  # woke about 10 s later, not a day
        assert any(m.startswith("Going to sleep for ") for m in caplog.messages)
        assert "sleep_until completed" in caplog.messages
    finally:
        await client.close()
        interrupt.set()
        await worker
    assert "Interrupt received, shutting down..." in caplog.messages
