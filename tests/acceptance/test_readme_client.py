"""The README's "Client" typed in as written (the blocks marked ``client``): start, result,
describe, history, cancel, and a start inside the caller's own transaction, committed and
rolled back, against a fresh database."""

from __future__ import annotations

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_client_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("client", tmp_path, db_url, TIMEOUT * 2)
    lines = ran.stdout.splitlines()
    assert lines[:4] == ["order o-1: 42.0", "completed 3 events", "order-o-4: 0 runs", "order o-3: 7.0"]
    statuses = dict(sql("SELECT workflow_id, status FROM cairn.runs"))
    assert statuses == {"order-o-1": "completed", "order-o-2": "cancelled", "order-o-3": "completed"}
    # The outbox: the committed start's row is there, the rolled-back one's is not.
    assert sql("SELECT id FROM orders") == [("o-3",)]
