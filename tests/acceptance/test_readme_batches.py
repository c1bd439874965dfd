"""The README's "Batch operations" typed in as written (the blocks marked ``batches``): a
worker, four checkouts, and every batch command the section shows, against a fresh database."""

from __future__ import annotations

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_batch_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("batches", tmp_path, db_url, TIMEOUT * 2)
    out = ran.stdout
    # The dry run counted the four open runs and wrote nothing: the batches are the six acted on.
    assert ("terminate would act on 4 runs matching 'WorkflowType = \"checkout\" AND Status = \"running\"' "
            "(4 running)") in out
    batches = sql("SELECT kind, matched, done, skipped, failed, status FROM cairn.batches ORDER BY created_at")
    assert [b[0] for b in batches] == ["signal", "signal", "retry", "reset", "cancel", "terminate"]
    assert all(status == "completed" and failed == 0 for *_, failed, status in batches)
    signal_acme, signal_globex, retry, reset, cancel, _ = batches
    assert signal_acme[1:3] == (2, 2)
    assert signal_globex[1:3] == (2, 2)
    assert retry[1:3] == (1, 1)  # checkout-2, declined
    assert reset[1:3] == (3, 3)  # the three completed checkouts
    # acme: two closed runs skipped, the open runs of checkout-1 (reset) and checkout-2 (retried) cancelled.
    assert cancel[1:5] == (4, 2, 2, 0)
    # What approve.py printed, once all four had closed.
    assert "checkout-1 charged 20, approved by ops" in out
    assert "checkout-2 workflow 'checkout-2' failed: ActivityError" in out
    assert "card declined" in out
    assert "checkout-3 charged 30, approved by ops" in out
    assert "running: 0" in out
    # Every run is closed. The newest of globex's are the resets, waiting for an approval
    # until the terminate (with its reason); acme's were cancelled (or terminated, had the
    # worker not yet taken the cancel in when the terminate's filter was evaluated).
    rows = dict(sql("SELECT DISTINCT ON (workflow_id) workflow_id, status FROM cairn.runs "
                    "ORDER BY workflow_id, created_at DESC"))
    assert rows["checkout-3"] == rows["checkout-4"] == "terminated"
    assert {rows["checkout-1"], rows["checkout-2"]} <= {"cancelled", "terminated"}
    assert sql("SELECT count(*) FROM cairn.runs WHERE status = 'running'") == [(0,)]
    reasons = sql("SELECT h.data ->> 'reason' FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                  "WHERE r.workflow_id = 'checkout-3' AND h.type = 'WorkflowTerminated' ORDER BY r.created_at DESC")
    assert reasons[0] == ("bad deploy",)
