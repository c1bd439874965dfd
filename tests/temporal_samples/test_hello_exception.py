"""samples-python hello/hello_exception.py, ported: two attempts of the failing activity, then
the workflow fails and the sample logs the failure with its recorded stack appended."""

from __future__ import annotations

import logging

from cairn import WorkflowFailure
from support import events

from . import hello_exception


async def test_hello_exception_logs_what_the_sample_logs(db_url, sql, capsys, caplog):
    caplog.set_level(logging.ERROR)
    await hello_exception.main(db_url)
    assert capsys.readouterr().out == ""
    (record,) = [r for r in caplog.records if r.getMessage() == "Got workflow failure"]
    assert record.exc_info is not None
    err = record.exc_info[1]
    assert isinstance(err, WorkflowFailure)
    assert err.type == "ActivityError"
    message = str(err)
    assert "RuntimeError: Greeting exception: Hello, World!" in message.splitlines()[0]
    assert "\nStack:\n" in message  # append_temporal_stack found the recorded stack
    assert "cairn.errors.ActivityError" in message.split("\nStack:\n")[1]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-exception-workflow-id'")[0]
    (failed,) = [d for _, t, d in events(sql, str(run_id)) if t == "ActivityFailed"]
    assert (failed["attempts"], failed["retry_state"], failed["failure"]["type"]) == (2, "maximum_attempts",
                                                                                    "RuntimeError")
