"""The README's "Pause and resume" typed in as written (the blocks marked ``pauses``): a
worker, a paused activity type and queue, a paused run, a paused and failed activity, and the
same through the Python client, against a fresh database."""

from __future__ import annotations

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_pause_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("pauses", tmp_path, db_url, TIMEOUT * 2)
    out = ran.stdout
    # `cairn pauses` listed the four pauses, each with its note (the queue's has none).
    listed = out[out.index("KIND "):out.index("resumed activity 3 of checkout-43")]
    assert [line.split()[0] for line in listed.splitlines()[1:]] == ["activity_type", "run", "activity", "queue"]
    for shown in ("checkout-42", "payment provider incident", "checkout-43", "operator", "wrong amount"):
        assert shown in listed
    # With its type and queue resumed, checkout-42 was still paused and its charge held.
    described = out[out.index("workflow  checkout-42"):out.index("resumed checkout-42")]
    assert "status    running" in described
    assert "payment provider incident (resume: cairn unpause)" in described
    assert "held: its run is paused" in described
    # What pause_demo.py printed: checkout-44 paused while its charge was, then the outcomes.
    assert "run checkout-44 payment provider incident" in out
    assert "True False" in out
    assert "checkout-42 charged 20" in out
    for failed in ("checkout-43", "checkout-44"):
        assert (f"{failed} workflow '{failed}' failed: ActivityError: activity charge_card (seq 3) failed: "
                "ActivityFailedByOperator: refunded by hand") in out
    # The paused run took no workflow task while paused: its history is its first task, then
    # the charge's outcome and the close in one task after the resume.
    history = [t for (t,) in sql("SELECT h.type FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                                 "WHERE r.workflow_id = 'checkout-42' ORDER BY h.seq")]
    assert history == ["WorkflowStarted", "WorkflowTaskStarted", "ActivityScheduled", "WorkflowTaskStarted",
                       "ActivityCompleted", "WorkflowCompleted"]
    assert sql("SELECT count(*) FROM cairn.activity_pauses") == [(0,)]
