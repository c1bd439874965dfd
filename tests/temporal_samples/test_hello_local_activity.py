"""The port of Temporal's ``hello/hello_local_activity.py`` prints what the sample prints,
and its activity ran as a local activity (a marker, no activity task)."""

from __future__ import annotations

import pytest

from support import events

from . import hello_local_activity as sample


async def test_hello_local_activity_prints_the_greeting(db_url: str, sql, capsys: pytest.CaptureFixture[str]):
    await sample.main(db_url)
    assert capsys.readouterr().out == "Result: Hello, World!\n"
    [(run_id,)] = sql("SELECT run_id::text FROM cairn.runs WHERE workflow_id = 'hello-local-activity-workflow-id'")
    assert [(t, d.get("kind"), d.get("result")) for _, t, d in events(sql, run_id) if t == "MarkerRecorded"] == [
        ("MarkerRecorded", "local_activity", "Hello, World!")]
    assert "ActivityScheduled" not in [t for _, t, _ in events(sql, run_id)]
