"""The README's "Priority, fairness and per-key limits" typed in as written (the blocks
marked ``priority``): limits set from Python, runs started with a priority, a fairness key
and a concurrency key, the CLI's start flags, describe and ``cairn limits``."""

from __future__ import annotations

import json

import pytest

from support import TIMEOUT, query
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_priority_example_works_as_typed(tmp_path, db_url):
    ran = run_readme("priority", tmp_path, db_url, TIMEOUT * 2)
    assert "['exported c0', 'exported c1', 'exported c2', 'exported c3']" in ran.stdout
    assert "fairness key tenant-b (weight 2)" in ran.stdout  # describe
    listed = json.loads(ran.stdout[ran.stdout.index("[\n"):ran.stdout.index("\n]") + 2])
    assert [(x["kind"], x["max_running"], x["in_use"]) for x in listed] == [("workflow", 2, 0)]
    # Two of the key's runs at most were open and started at once: the later ones started
    # (their first workflow task) only after an earlier one closed.
    rows = query(db_url, """SELECT r.created_at, r.closed_at, h.at FROM cairn.runs r
                            JOIN cairn.history h ON h.run_id = r.run_id AND h.seq = 2
                            WHERE r.concurrency_key = 'customer-42'""")
    assert len(rows) == 5
    for _, _, began in rows:
        assert sum(1 for _, closed, b in rows if b <= began < closed) <= 2
    assert query(db_url, "SELECT count(*) FROM cairn.concurrency_limits") == [(1,)]  # crm-api's, kept
