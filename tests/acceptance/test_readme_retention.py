"""The README's "Retention, purge and archival" typed in as written (the blocks marked
``retention``): a namespace's retention and archive, purges by the CLI and by Python, and
the archived runs replayed, against a fresh database."""

from __future__ import annotations

import json

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_retention_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("retention", tmp_path, db_url, TIMEOUT * 2)
    out = ran.stdout
    archive = tmp_path / "archive"
    assert f"namespace default: closed runs kept 30d after they close; archive: {archive.as_uri()}" in out
    # The dry run with a cutoff a week back: none of the three closed runs is that old, the open one never goes.
    assert "would purge 0 closed runs of namespace default" in out
    assert "not purged: 1 open (never purged), 3 closed after" in out
    # The CLI's purge took the failed run only, archived; both replays of it passed.
    assert "purged 1 closed run (3 events)" in out
    assert out.count("OK: 3 events of report-hol replay with the current code") == 2
    # purge_demo.py: the two completed runs (report-sun is open), archived into one file, replayed from it.
    assert "2 {'completed': 2} 1 0" in out
    assert "replayed report-mon" in out
    assert "replayed report-tue" in out
    assert "namespace default: closed runs kept forever; archive: none" in out
    # What is left: the open run, and nothing of the purged ones.
    assert sql("SELECT workflow_id, status FROM cairn.runs") == [("report-sun", "running")]
    assert sql("SELECT count(*) FROM cairn.history h WHERE NOT EXISTS "
               "(SELECT FROM cairn.runs r WHERE r.run_id = h.run_id)") == [(0,)]
    files = sorted(archive.glob("default/*/*.jsonl"))
    archived = sorted(json.loads(line)["workflow_id"] for f in files for line in f.read_text().splitlines())
    assert len(files) == 2
    assert archived == ["report-hol", "report-mon", "report-tue"]
