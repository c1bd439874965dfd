"""The README's "Search attributes, filters, reset and retry" typed in as written (the
blocks marked ``searchattrs``): runs started with search attributes and a memo by the CLI
and by Python, found by filters, then reset and retried once their failure's cause is gone,
against a fresh database."""

from __future__ import annotations

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_search_attributes_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("searchattrs", tmp_path, db_url, TIMEOUT * 2)
    out = ran.stdout
    # The CLI's filter found the one failed order over 10; Python's, the three over 10 or vip.
    listed = out[out.index("WORKFLOW ID"):out.index("workflow 'order-o-3' failed")]
    assert [line.split()[0] for line in listed.splitlines()[1:]] == ["order-o-1"]
    assert "['order-o-1', 'order-o-3', 'order-o-4']" in out
    # Reset and retry, from Python and from the CLI: every order's newest run shipped.
    newest = dict(sql("SELECT DISTINCT ON (workflow_id) workflow_id, status FROM cairn.runs "
                      "ORDER BY workflow_id, created_at DESC"))
    assert newest == {f"order-o-{n}": "completed" for n in (1, 2, 3, 4)}
    assert out.count('charged 12.5, shipped o-') >= 2  # Python's two results
    # A reset run keeps what came before the task it re-runs: one charge, its shipping twice.
    (kept,) = sql("SELECT count(*) FILTER (WHERE h.data ->> 'activity_type' = 'charge') "
                  "FROM cairn.runs r JOIN cairn.history h USING (run_id) "
                  "WHERE r.workflow_id = 'order-o-1' AND r.reset_from IS NOT NULL AND h.type = 'ActivityScheduled'")
    assert kept == (1,)
    described = out[out.rindex("workflow  order-o-1"):]
    assert '"customer": "acme"' in described
    assert '"stage": "shipped"' in described
    assert '{"ticket": "T-123"}' in described
