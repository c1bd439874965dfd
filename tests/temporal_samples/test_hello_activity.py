"""samples-python hello/hello_activity.py, ported: it prints the activity's greeting, and
``activity.logger`` tags its record with the attempt's workflow, run and activity."""

from __future__ import annotations

import logging

from support import events

from . import hello_activity


async def test_hello_activity_prints_what_the_sample_prints(db_url, sql, capsys, caplog):
    caplog.set_level(logging.INFO, logger="cairn.activity")
    await hello_activity.main(db_url)
    assert capsys.readouterr().out.splitlines() == ["Result: Hello, World!"]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-activity-workflow-id'")[0]
    scheduled = [d for _, t, d in events(sql, str(run_id)) if t == "ActivityScheduled"]
    assert [d["activity_type"] for d in scheduled] == ["compose_greeting"]
    (record,) = [r for r in caplog.records if r.name == "cairn.activity"]
    assert record.getMessage() == "Running activity with parameter ComposeGreetingInput(greeting='Hello', name='World')"
    assert (record.workflow_id, record.run_id, record.activity_type, record.attempt) == (
        "hello-activity-workflow-id", str(run_id), "compose_greeting", 1)
