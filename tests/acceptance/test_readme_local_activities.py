"""The README's "Local activities" typed in as written (the blocks marked ``local``): a
local activity run inside the workflow task and recorded as a marker, against a fresh
database."""

from __future__ import annotations

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_local_activity_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("local", tmp_path, db_url, TIMEOUT * 2)
    assert "Hello, Ada!" in ran.stdout.splitlines()
    events = sql("SELECT h.type, h.data ->> 'kind', h.data ->> 'activity_type' FROM cairn.history h "
                 "JOIN cairn.runs r USING (run_id) WHERE r.workflow_id = 'greet-ada' ORDER BY h.seq")
    assert ("MarkerRecorded", "local_activity", "compose_greeting") in events
    assert "ActivityScheduled" not in {t for t, _, _ in events}
    assert "MarkerRecorded" in ran.stdout[ran.stdout.index("SEQ"):]
