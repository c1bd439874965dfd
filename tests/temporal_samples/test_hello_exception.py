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
    # Temporal's chain, each link with the stack recorded where it was raised, which
    # append_temporal_stack appended to its message.
    activity_error = err.__cause__
    assert isinstance(activity_error, WorkflowFailure)
    assert activity_error.type == "ActivityError"
    assert "cairn.errors.ActivityError" in str(activity_error).split("\nStack:\n")[1]
    runtime_error = activity_error.__cause__
    assert isinstance(runtime_error, WorkflowFailure)
    assert (runtime_error.type, runtime_error.message) == ("RuntimeError", "Greeting exception: Hello, World!")
    activity_stack = str(runtime_error).split("\nStack:\n")[1]
    assert "in compose_greeting" in activity_stack
    assert "RuntimeError: Greeting exception: Hello, World!" in activity_stack
    assert runtime_error.__cause__ is None
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-exception-workflow-id'")[0]
    (failed,) = [d for _, t, d in events(sql, str(run_id)) if t == "ActivityFailed"]
    assert (failed["attempts"], failed["retry_state"], failed["failure"]["type"]) == (2, "maximum_attempts",
                                                                                    "RuntimeError")
