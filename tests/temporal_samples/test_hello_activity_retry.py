"""samples-python hello/hello_activity_retry.py, ported: three failed attempts, then the
fourth succeeds; the history holds one scheduled activity and its one completion."""

from __future__ import annotations

from support import events

from . import hello_activity_retry


async def test_hello_activity_retry_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_activity_retry.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "Invoking activity, attempt number 1",
        "Invoking activity, attempt number 2",
        "Invoking activity, attempt number 3",
        "Invoking activity, attempt number 4",
        "Result: Hello, World!",
    ]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-activity-retry-workflow-id'")[0]
    history = events(sql, str(run_id))
    types = [t for _, t, _ in history]
    assert types.count("ActivityScheduled") == types.count("ActivityCompleted") == 1
    assert "ActivityFailed" not in types  # retries are not events, as in Temporal
    (completed,) = [d for _, t, d in history if t == "ActivityCompleted"]
    assert completed["attempt"] == 4
