"""samples-python hello/hello_continue_as_new.py, ported: ten runs of one workflow id, each
logging its iteration once (the workflow logger is quiet in replay), the eleventh returning."""

from __future__ import annotations

import logging

from . import hello_continue_as_new


async def test_hello_continue_as_new_logs_what_the_sample_logs(db_url, sql, capsys, caplog):
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    await hello_continue_as_new.main(db_url)
    assert capsys.readouterr().out == ""
    logged = [r.getMessage() for r in caplog.records if r.name == "cairn.workflow"]
    assert logged == [f"Running workflow iteration {i}" for i in range(10)]
    runs = sql("SELECT status, (SELECT data->'input' FROM cairn.history h WHERE h.run_id = r.run_id AND seq = 1) "
               "FROM cairn.runs r WHERE workflow_id = 'hello-continue-as-new-workflow-id' ORDER BY run_id")
    assert runs == [("continued_as_new", [i]) for i in range(10)] + [("completed", [10])]
