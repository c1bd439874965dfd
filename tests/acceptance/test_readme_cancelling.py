"""The README's "Cancelling activities" typed in as written (the blocks marked
``cancelling``): a thread activity that polls ``activity.is_cancelled()`` and returns early,
its result recorded, against a fresh database."""

from __future__ import annotations

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_cancelling_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("cancelling", tmp_path, db_url, TIMEOUT * 2)
    assert "stopped early" in ran.stdout.splitlines()
    events = sql("SELECT h.type, h.data ->> 'result' FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                 "WHERE r.workflow_id = 'nightly-reindex' AND h.type LIKE 'Activity%%' ORDER BY h.seq")
    assert events == [("ActivityScheduled", None), ("ActivityCancelRequested", None),
                      ("ActivityCompleted", "stopped early")]
