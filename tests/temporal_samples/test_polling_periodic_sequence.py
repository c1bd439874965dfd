"""samples-python polling/periodic_sequence, ported: the child polls ten times, a second
apart, logging each failure, then continues as new while the parent waits on it; the
service never comes up, so the sample runs until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cairn import Client
from support import events, wait_until

from . import polling_periodic_sequence


async def test_polling_periodic_sequence_polls_then_continues_as_new(db_url, sql, capsys, caplog):
    caplog.set_level(logging.ERROR, logger="cairn.workflow")
    sample = asyncio.create_task(polling_periodic_sequence.main(db_url))

    def child_runs() -> list[tuple[str, str]]:
        return sql("SELECT run_id::text, status FROM cairn.runs WHERE workflow_type = 'ChildWorkflow' "
                   "ORDER BY run_id")

    try:
        await wait_until(lambda: len(child_runs()) >= 2, timeout=60, what="the child to continue as new")
        client = await Client.connect(db_url)
        await client.get_handle("periodic-child-workflow-retry").terminate("the sample runs until stopped")
        await client.close()
    finally:
        sample.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sample
    assert capsys.readouterr().out == ""  # no result: the service never came up

    first = child_runs()[0]
    assert first[1] == "continued_as_new"
    history = events(sql, first[0])
    types = [t for _, t, _ in history]
    assert types.count("ActivityScheduled") == types.count("ActivityFailed") == 10
    assert types.count("TimerFired") == 10
    assert all(d["attempts"] == 1 for _, t, d in history if t == "ActivityFailed")
    assert history[-1][1] == "WorkflowContinuedAsNew"
    assert history[-1][2]["input"] == ["World"]
    first_run_logs = [r.getMessage() for r in caplog.records
                      if r.name == "cairn.workflow" and getattr(r, "run_id", None) == first[0]]
    assert first_run_logs == ["Activity failed, retrying in 1 seconds"] * 10
    parent = sql("SELECT status FROM cairn.runs WHERE workflow_type = 'GreetingWorkflow'")
    assert parent == [("terminated",)]
