"""samples-python hello/hello_activity_async.py, ported: the ``async def`` activity's
greeting is printed."""

from __future__ import annotations

from . import hello_activity_async


async def test_hello_activity_async_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_activity_async.main(db_url)
    assert capsys.readouterr().out.splitlines() == ["Result: Hello, World!"]
    assert sql("SELECT workflow_type, status FROM cairn.runs WHERE workflow_id = 'hello-activity-workflow-id'") == [
        ("GreetingWorkflow", "completed")]
