"""samples-python hello/hello_parallel_activity.py, ported: five activities scheduled in one
workflow task, their sorted results printed."""

from __future__ import annotations

from support import events

from . import hello_parallel_activity


async def test_hello_parallel_activity_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_parallel_activity.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "Result: ['Hello, user1!', 'Hello, user2!', 'Hello, user3!', 'Hello, user4!', 'Hello, user5!']",
    ]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-parallel-activity-workflow-id'")[0]
    types = [t for _, t, _ in events(sql, str(run_id))]
    first_completion = types.index("ActivityCompleted")
    assert types[:first_completion].count("ActivityScheduled") == 5  # all five before any result
