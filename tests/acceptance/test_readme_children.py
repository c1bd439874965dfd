"""The README's "Child workflows, continue-as-new, timeouts" typed in as written (the blocks
marked ``children``): a parent with two children, and a poller that continues as new,
against a fresh database."""

from __future__ import annotations

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_children_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("children", tmp_path, db_url, TIMEOUT * 2)
    lines = ran.stdout.splitlines()
    assert "Receipt(paid='paid 42.0', tracking='parcel o-1')" in lines
    # Six polls per run (20 events), so the third run returns 18; result() followed the chain.
    assert "18" in lines
    assert "['completed', 'continued_as_new', 'continued_as_new']" in lines
    # The children: the default id "<parent id>/<seq>", and the one named.
    children = sql("SELECT workflow_id, status, parent_run_id IS NOT NULL FROM cairn.runs "
                   "WHERE workflow_type IN ('payment', 'ship') ORDER BY workflow_id")
    assert children == [("order-o-1/3", "completed", True), ("ship-o-1", "completed", True)]
    listed = ran.stdout[ran.stdout.index("WORKFLOW ID"):]
    assert [line.split()[0] for line in listed.splitlines()[1:]] == ["ship-o-1", "order-o-1/3"]
    # The poller's runs carry the execution timeout.
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'poller' AND execution_deadline IS NULL") == [(0,)]
