"""samples-python hello/hello_activity_heartbeat.py, ported: three heartbeats, each within
the 2 s heartbeat timeout, then the greeting, in one attempt."""

from __future__ import annotations

from support import events

from . import hello_activity_heartbeat


async def test_hello_activity_heartbeat_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_activity_heartbeat.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "Heartbeating activity",
        "Heartbeating activity",
        "Heartbeating activity",
        "Result: Hello, World!",
    ]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-activity-heartbeating-workflow-id'")[0]
    completed = [d for _, t, d in events(sql, str(run_id)) if t == "ActivityCompleted"]
    assert len(completed) == 1
