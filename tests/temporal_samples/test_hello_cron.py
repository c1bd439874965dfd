"""samples-python hello/hello_cron.py, ported: it prints that it runs the workflow once a
minute, and each run logs its greeting."""

from __future__ import annotations

import asyncio
import logging

from support import wait_until

from . import hello_cron


async def test_hello_cron_runs_once_a_minute(db_url, sql, capsys, caplog):
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    stop = asyncio.Event()
    task = asyncio.create_task(hello_cron.main(db_url, stop))
    try:
        # The first slot is the next whole minute.
        await wait_until(lambda: sql("SELECT count(*) FROM cairn.runs WHERE status = 'completed' "
                                     "AND workflow_id LIKE 'hello-cron-workflow-id-%%'")[0][0] >= 1, timeout=75)
    finally:
        stop.set()
        await task
    assert capsys.readouterr().out.splitlines() == ["Running workflow once a minute"]
    assert "Result: Hello, World!" in [r.getMessage() for r in caplog.records if r.name == "cairn.workflow"]
    [(workflow_id, slot)] = sql("SELECT workflow_id, slot FROM cairn.schedule_actions ORDER BY slot LIMIT 1")
    assert slot.second == 0
    assert slot.microsecond == 0
    assert workflow_id == "hello-cron-workflow-id-" + slot.strftime("%Y-%m-%dT%H:%M:00Z")
