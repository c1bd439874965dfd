"""samples-python hello/hello_query.py, ported: the first query sees the greeting set before
the timer, the second (three seconds later) the one set after it."""

from __future__ import annotations

from . import hello_query


async def test_hello_query_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_query.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "First greeting result: Hello, World!",
        "Second greeting result: Goodbye, World!",
    ]
    assert sql("SELECT status FROM cairn.runs WHERE workflow_id = 'hello-query-workflow-id'") == [("completed",)]
