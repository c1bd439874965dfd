"""samples-python hello/hello_activity_method.py, ported: the activity method reaches the
instance's database client, which prints."""

from __future__ import annotations

from . import hello_activity_method


async def test_hello_activity_method_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_activity_method.main(db_url)
    assert capsys.readouterr().out.splitlines() == ["Database update executed"]
    assert sql("SELECT status FROM cairn.runs WHERE workflow_id = 'hello-activity-method-workflow-id'") == [
        ("completed",)]
