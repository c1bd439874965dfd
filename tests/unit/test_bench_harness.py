"""The benchmark harness's fairness (bench/run.py, issue 15 item 19): read-only commits
counted apart from writing ones, variants only on their workloads, the same warm-up for
every system, and the Celery rows' Redis persisting as their labels say."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import run  # bench/run.py, through pytest's pythonpath

BENCH = Path(__file__).resolve().parents[2] / "bench"


def measured(commits: float, xids: float) -> dict[str, Any]:
    pg = {"xact_commit": commits, "xids": xids, "wal_sync": 20.0, "wal_bytes": 1000.0, "server_cpu": 0.1}
    return {"pg": pg, "cpu_user": 0.1, "cpu_sys": 0.0, "wall": 1.0, "maxrss_mb": 10.0}


def test_read_only_commits_are_counted_apart_from_writing_ones():
    out = {"steps": 10, "seconds": 1.0, "latencies_ms": [1.0] * 10, "extra": {"window_xids": 30}}
    f = run.per_run_figures("W3", out, measured(commits=100, xids=40))
    assert f["commits_per_step"] == 10
    assert f["writes_per_step"] == 4
    assert f["read_only_commits_per_step"] == 6
    assert f["window_writes_per_step"] == 3


def test_throughput_also_reports_the_rate_with_the_enqueue():
    out = {"steps": 100, "seconds": 1.0, "extra": {"enqueue_and_drain_s": 2.0}}
    f = run.per_run_figures("W1", out, measured(commits=100, xids=100))
    assert f["headline"] == 100
    assert f["rate_incl_enqueue"] == 50


def by_name(*names: str) -> list[run.System]:
    return [s for s in run.SYSTEMS if s.name in names]


def test_peers_at_best_and_durable_celery_have_their_own_rows():
    names = {s.name for s in run.SYSTEMS}
    assert {"dbos-best", "procrastinate-best", "celery-aof-everysec", "celery-aof-always"} <= names
    best = by_name("dbos-best")[0]
    assert "dbos_poll_s=0.001" in best.params
    assert "result_poll_s=0.001" in best.params
    assert {s.redis_aof for s in by_name("celery", "celery-aof-everysec", "celery-aof-always")} == {
        "no", "everysec", "always"}


def test_a_variant_shows_only_on_its_workloads():
    summary = {"headline": 1.0, "runs": 1, "commits_per_step": 1.0}
    results = {name: {key: {"summary": summary} for key in ("W1", "W3")} for name in ("cairn", "dbos-best")}
    rows = run.table_rows(results, ["W1", "W3"], by_name("cairn", "dbos-best"), {})
    assert [(r[0], r[1]) for r in rows] == [("W1", "cairn"), ("W3", "cairn"), ("W3", "dbos-best")]


def test_every_system_gets_the_same_warm_up():
    for workload in ("W1", "W3", "W5"):
        warmups = {tuple(p for p in run.run_params(s, workload) if p.startswith("warmup=")) for s in run.SYSTEMS}
        assert len(warmups) == 1, (workload, warmups)
    assert run.run_params(run.SYSTEMS[0], "W3")[0] == f"warmup={run.WARMUP['W3']}"


def redis_config(port: int, key: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"CONFIG GET {key}\r\n".encode())
        reply = s.recv(4096).decode().split("\r\n")
    return reply[4]  # *2, $len, key, $len, value


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
@pytest.mark.parametrize(("aof", "appendonly"), [("no", "no"), ("everysec", "yes"), ("always", "yes")])
def test_each_celery_row_gets_a_private_redis_persisting_as_labelled(aof: str, appendonly: str):
    server = run.PrivateRedis(aof)
    try:
        assert server.port != 6379  # never the machine's shared Redis
        assert redis_config(server.port, "appendonly") == appendonly
        assert redis_config(server.port, "save") == ""
        if aof != "no":
            assert redis_config(server.port, "appendfsync") == aof
    finally:
        server.stop()
    assert server.proc.poll() is not None
    assert not server.dir.exists()
