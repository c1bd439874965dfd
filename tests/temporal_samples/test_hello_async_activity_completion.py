"""The port of Temporal's hello_async_activity_completion prints what the sample prints,
and the activity was completed from outside by its token."""

from __future__ import annotations

from support import events

from . import hello_async_activity_completion as sample


async def test_hello_async_activity_completion(db_url, sql, capsys):
    await sample.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "Completing activity asynchronously",
        "Waiting one second...",
        "Waiting one second...",
        "Waiting one second...",
        "Result: Hello, World!",
    ]
    [(run_id,)] = sql("SELECT run_id::text FROM cairn.runs "
                      "WHERE workflow_id = 'hello-async-activity-completion-workflow-id'")
    completed = [d for _, t, d in events(sql, run_id) if t == "ActivityCompleted"]
    assert [c.get("result") for c in completed] == ["Hello, World!"]
