"""samples-python hello/hello_update.py, ported: it prints the update's result, then the
workflow's."""

from __future__ import annotations

from support import events

from . import hello_update


async def test_hello_update_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_update.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "Update Result: Workflow status updated",
        "Workflow Result: Hello, World!",
    ]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-update-workflow-id'")[0]
    types = [t for _, t, _ in events(sql, str(run_id))]
    assert types.count("UpdateAccepted") == types.count("UpdateCompleted") == 1
