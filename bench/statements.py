"""Where two versions of Cairn differ in Postgres work: statement by statement.

    python bench/statements.py --before ../before --after . [--workloads W1,W2,W3] [--rounds 3]

Each of ``--before`` and ``--after`` is a checkout with its own ``.venv`` (``make
.venv/.installed``; ``git worktree add ../before <commit>`` makes one). On a private
cluster of the system's PostgreSQL with ``pg_stat_statements`` (the ``pgserver`` wheel
has no contrib modules: ``--pg-bin``, default the newest ``/usr/lib/postgresql/*/bin``),
each round runs each workload once per version, alternating, on a fresh database, with
that version's own ``bench/cairn_runner.py``. It prints per run the steps/s, statements,
execution time, buffers and WAL of the database's statements (nested ones included: a
function's own statements count), then per workload the statements whose time per step
differs most between the versions, summed over the rounds.

Unlike throughput on a shared 2-core machine, which drifts by a third between runs,
buffers and WAL per step are nearly exact and a statement's execution time is its own:
what this found (2026-12-07) is in bench/README.md ("Measurements behind design
decisions").
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pgcluster  # noqa: E402

SIZES = {"W1": 3000, "W2": 500, "W3": 200}
STATS = ("SELECT query, calls, total_exec_time, shared_blks_hit + shared_blks_read, wal_bytes "
         "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)")


def system_pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not found:
        raise SystemExit("no /usr/lib/postgresql/*/bin: pass --pg-bin (a PostgreSQL with pg_stat_statements)")
    return found[-1]


def run_once(cluster: pgcluster.Cluster, tree: Path, workload: str, size: int,
             db: str) -> tuple[dict[str, Any], list[Any]]:
    dsn = cluster.create_db(db)
    with cluster.connect(db) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    # Migrated first, by the version's own CLI, so that the schema's DDL is not counted.
    subprocess.run([str(tree / ".venv/bin/cairn"), "--database-url", dsn, "db", "migrate"], capture_output=True,
                   check=True)
    with cluster.connect() as c:
        c.execute("SELECT pg_stat_statements_reset()")
    out = subprocess.run([str(tree / ".venv/bin/python"), str(tree / "bench/cairn_runner.py"), "--dsn", dsn,
                          "--workload", workload, "--size", str(size), "--workers", "1"],
                         capture_output=True, text=True, cwd=tree, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"error": out.stderr[-2000:]}
    with cluster.connect() as c:
        rows = c.execute(STATS, [db]).fetchall()
    cluster.drop_db(db)
    return result, rows


def per_statement(rows: list[Any]) -> dict[str, list[float]]:
    """A statement's key -> [calls, ms, buffers, WAL bytes]. The key is a prepared
    statement's name, else the first 70 characters of its text (whitespace folded): a
    statement whose text changed between the versions is still one row."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for query, calls, ms, buffers, wal in rows:
        text = " ".join(query.split())
        acc = out[" ".join(text.split()[:2]) if text.startswith("PREPARE ") else text[:70]]
        for i, v in enumerate((calls, ms, buffers, wal)):
            acc[i] += float(v)
    return out


def _per_step(totals: dict[str, dict[str, list[float]]], steps: dict[str, int], name: str, k: str, i: int) -> float:
    return totals[name][k][i] / steps[name] if k in totals[name] else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=8, help="statements shown per workload")
    ap.add_argument("--pg-bin", type=Path, default=None)
    a = ap.parse_args()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    cluster = pgcluster.Cluster(bin_dir=a.pg_bin or system_pg_bin(), extra={
        "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all",
        "pg_stat_statements.max": "10000"})
    cluster.start()
    try:
        with cluster.connect() as c:  # the reset and the reads run here
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for workload in a.workloads.split(","):
            size = SIZES.get(workload, 500)
            totals: dict[str, dict[str, list[float]]] = {"before": defaultdict(lambda: [0.0] * 4),
                                                         "after": defaultdict(lambda: [0.0] * 4)}
            steps = {"before": 0, "after": 0}
            for r in range(a.rounds):
                for name, tree in trees.items():
                    result, rows = run_once(cluster, tree, workload, size, f"stmts_{workload.lower()}_{name}")
                    n = int(result.get("steps") or 0)
                    if not n:
                        raise SystemExit(f"{name} {workload}: {result}")
                    steps[name] += n
                    for k, v in per_statement(rows).items():
                        acc = totals[name][k]
                        for i in range(4):
                            acc[i] += v[i]
                    s = [sum(x[i] for x in per_statement(rows).values()) for i in range(4)]
                    print(f"{workload} round {r} {name:6}: {n / result['seconds']:7.0f} steps/s; per step "
                          f"{s[0] / n:.2f} statements, {s[1] / n * 1000:.0f} µs, {s[2] / n:.0f} buffers, "
                          f"{s[3] / n:.0f} B WAL", flush=True)
            print(f"\n{workload}: statements whose time per step differs most (µs per step, before -> after)")
            keys = set(totals["before"]) | set(totals["after"])
            per_step = functools.partial(_per_step, totals, steps)
            ranked = sorted(keys, key=lambda k: -abs(per_step("after", k, 1) - per_step("before", k, 1)))
            for k in ranked[:a.top]:
                print(f"  {per_step('before', k, 1) * 1000:7.1f} -> {per_step('after', k, 1) * 1000:7.1f} µs  "
                      f"calls {per_step('before', k, 0):.2f} -> {per_step('after', k, 0):.2f}  "
                      f"buffers {per_step('before', k, 2):.1f} -> {per_step('after', k, 2):.1f}  "
                      f"WAL {per_step('before', k, 3):.0f} -> {per_step('after', k, 3):.0f} B | {k}")
            print()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
