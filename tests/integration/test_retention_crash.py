"""A worker killed (kill -9) in the middle of its retention pass loses no run and archives
none twice: the next worker's pass goes on from where the database says, and every purged
run is in the archive exactly once."""

from __future__ import annotations

from pathlib import Path

import retention as bench  # bench/retention.py: closed runs generated in SQL

from cairn.store import archive
from support import spawn_worker, wait_for

N = 4000  # closed runs, eight chunks of the workers' 500


def _left(sql) -> int:
    return int(sql("SELECT count(*) FROM cairn.runs WHERE workflow_id LIKE 'old-%'")[0][0])


def test_kill_9_in_the_middle_of_a_retention_pass(db_url, sql, tmp_path):
    bench.load_closed_runs(db_url, N, vacuum=False)
    loaded = {str(r[0]) for r in sql("SELECT run_id FROM cairn.runs")}
    events = sql("SELECT count(*) FROM cairn.history")[0][0]
    sql("INSERT INTO cairn.namespaces (namespace, retention, archive_uri, updated_at) "
        "VALUES ('default', interval '30 days', %s, now())", (f"file://{tmp_path}/archive",))
    here = Path(__file__).parent
    first = spawn_worker("first", db_url, "retention_flows", cwd=here, log_path=tmp_path / "first.log")
    try:
        wait_for("the first worker's pass to purge some runs, not all", lambda: 0 < _left(sql) < N, interval=0.02)
    finally:
        first.kill9()
    left_at_kill = _left(sql)
    assert 0 < left_at_kill < N, "the kill landed after the pass: nothing to resume"
    second = spawn_worker("second", db_url, "retention_flows", cwd=here, log_path=tmp_path / "second.log",
                          verbose=1)
    try:
        wait_for("the second worker's pass to purge the rest", lambda: _left(sql) == 0, interval=0.1,
                 procs=(second,))
        wait_for("the pass to end and say so", lambda: "retention: purged" in second.log(), procs=(second,))
    finally:
        second.kill9()

    assert sql("SELECT count(*) FROM cairn.history") == [(0,)]
    lines = [r for f in sorted((tmp_path / "archive").rglob("*.jsonl")) for r in archive.read_runs(f)]
    assert sorted(r.run_id for r in lines) == sorted(loaded)  # each run once: none lost, none twice
    assert sum(len(r.document["events"]) for r in lines) == events
