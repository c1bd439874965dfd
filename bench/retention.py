"""Retention under load: what purging N closed runs costs W2 (issue 18, item 1).

    .venv/bin/python bench/retention.py --size 20000            # a check that it works
    .venv/bin/python bench/retention.py --size 1000000 --w2 2000  # the measurement

On a private Postgres (bench/pgcluster.py, the settings of every benchmark), twice, each in
a fresh database loaded with ``--size`` closed runs of ``one_step`` (six events each, the
shape a real run has, closed 40 days ago, generated in SQL):

1. *baseline*: W2 (``--w2`` workflows x 10 sequential activities, one worker process, as
   bench/cairn_runner.py runs it), alone;
2. *with purge*: the same W2 while ``cairn purge --older-than 30d --busy B`` (the code path
   of the workers' retention pass, in a process of its own) removes the loaded runs,
   archiving them with ``--archive``.

Prints W2's steps/s in both, their ratio (the issue asks at least 0.8), the purge's rate and
how much of it overlapped W2, the sizes of runs and history (with their indexes) before the
purge, after it, after a plain VACUUM, and after loading half as many runs again (freed
space is reused: the tables do not grow back), and with ``--vacuum-full`` after VACUUM FULL
(the space given back to the OS, under an exclusive lock). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cairn_runner  # noqa: E402
import pgcluster  # noqa: E402
import psycopg  # noqa: E402

from cairn.store import db as cairn_db  # noqa: E402

CAIRN = str(Path(sys.executable).parent / "cairn")
CHUNK = 100_000  # runs generated per statement

# Closed runs of bench/cairn_flows.one_step, as a worker records them (input i, result i+1),
# each closed %(days)s days ago plus i ms; run ids are UUIDv7-shaped (time, then version
# 7, then i), unique by i.
LOAD_RUNS = """
INSERT INTO cairn.runs (run_id, namespace, workflow_id, workflow_type, queue, status, created_at, closed_at)
SELECT (lpad(to_hex((extract(epoch FROM t.at) * 1000)::bigint), 12, '0') || '7000' || '8'
        || lpad(to_hex(i), 15, '0'))::uuid,
       %(namespace)s, 'old-' || i, 'one_step', 'default', 'completed', t.at, t.at + interval '40 ms'
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i,
     LATERAL (SELECT now() - %(days)s * interval '1 day' - interval '1 day' + i * interval '1 ms' AS at) t
"""
LOAD_HISTORY = """
INSERT INTO cairn.history (run_id, seq, type, data, at)
SELECT r.run_id, e.seq, e.type,
       CASE e.seq
         WHEN 1 THEN jsonb_build_object('input', jsonb_build_array(i), 'queue', 'default', 'workflow_id', r.workflow_id,
                                        'workflow_type', 'one_step')
         WHEN 3 THEN jsonb_build_object('input', jsonb_build_array(i), 'queue', 'default', 'activity_type', 'inc',
                                        'options', e.data)
         WHEN 5 THEN jsonb_build_object('result', i + 1, 'attempt', 1, 'activity_seq', 3)
         WHEN 6 THEN jsonb_build_object('result', i + 1)
         ELSE jsonb_build_object('time', extract(epoch FROM r.created_at), 'worker', 'bench:load')
       END,
       r.created_at + e.seq * interval '5 ms'
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
JOIN cairn.runs r ON r.namespace = %(namespace)s AND r.workflow_id = 'old-' || i,
     (VALUES (1, 'WorkflowStarted', '{}'::jsonb), (2, 'WorkflowTaskStarted', '{}'),
             (3, 'ActivityScheduled', '{"retry_policy": {"jitter": 0.1, "initial_interval": "PT1S",
               "maximum_attempts": 0, "maximum_interval": null, "backoff_coefficient": 2.0,
               "non_retryable_error_types": []}, "heartbeat_timeout": null, "start_to_close_timeout": 60.0,
               "schedule_to_close_timeout": null}'),
             (4, 'WorkflowTaskStarted', '{}'), (5, 'ActivityCompleted', '{}'),
             (6, 'WorkflowCompleted', '{}')) AS e(seq, type, data)
"""
SIZES = """
SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'cairn' AND c.relname IN ('runs', 'history')
"""


def load_closed_runs(dsn: str, n: int, *, namespace: str = "default", days: int = 40, start: int = 1,
                     vacuum: bool = True) -> None:
    """Inserts closed one_step runs number start..start+n-1 (six events each), closed
    ``days`` days ago; their histories replay with bench/cairn_flows.one_step."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for lo in range(start, start + n, CHUNK):
            hi = min(lo + CHUNK - 1, start + n - 1)
            args = {"lo": lo, "hi": hi, "namespace": namespace, "days": days}
            conn.execute(LOAD_RUNS, args)
            conn.execute(LOAD_HISTORY, args)
        if vacuum:
            conn.execute("VACUUM ANALYZE cairn.runs, cairn.history")


def sizes(dsn: str) -> dict[str, float]:
    """MB of runs and history, indexes and TOAST included."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {str(name): round(int(b) / 1e6, 1) for name, b in conn.execute(SIZES).fetchall()}


def count_runs(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM cairn.runs WHERE workflow_id LIKE 'old-%'").fetchone()
        return int(row[0]) if row else 0


def w2(dsn: str, n: int) -> dict[str, Any]:
    p = dict(cairn_runner.DEFAULTS)
    p["steps"] = 10
    out = asyncio.run(cairn_runner.w2(dsn, n, 1, p))
    return {"steps": out["steps"], "seconds": out["seconds"], "steps_per_s": out["steps"] / out["seconds"],
            "window": (time.time() - out["seconds"], time.time())}


def phase(cluster: pgcluster.Cluster, name: str, a: argparse.Namespace, purge: bool) -> dict[str, Any]:
    dsn = cluster.create_db(f"retention_{name}")
    cairn_db.migrate(dsn)
    t = time.perf_counter()
    load_closed_runs(dsn, a.size)
    print(f"[{name}] loaded {a.size} closed runs in {time.perf_counter() - t:.1f} s; sizes {sizes(dsn)}",
          file=sys.stderr, flush=True)
    out: dict[str, Any] = {"sizes_loaded_mb": sizes(dsn)}
    proc = None
    if purge:
        archive = tempfile.mkdtemp(prefix="cairn-retention-archive-")
        cmd = [CAIRN, "--database-url", dsn, "purge", "--older-than", "30d", "--yes", "--json",
               "--busy", str(a.busy), "--chunk-size", str(a.chunk)]
        cmd += ["--archive", archive] if a.archive else ["--no-archive"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    left_before = count_runs(dsn)
    res = w2(dsn, a.w2)
    left_after = count_runs(dsn)
    out["w2"] = {k: v for k, v in res.items() if k != "window"}
    if proc is not None:
        stdout, _ = proc.communicate(timeout=a.timeout)
        t_done = time.time()
        summary = json.loads(stdout) if stdout.strip() else {"error": f"exit {proc.returncode}"}
        out["purge"] = {"runs": summary.get("runs"), "events": summary.get("events"),
                        "seconds": summary.get("seconds"), "runs_per_s": (summary.get("runs") or 0) /
                        (summary.get("seconds") or 1), "files": len(summary.get("files") or []),
                        "purged_during_w2": left_before - left_after,
                        "purge_outlasted_w2": t_done >= res["window"][1]}
        out["sizes_after_purge_mb"] = sizes(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            t = time.perf_counter()
            conn.execute("VACUUM cairn.runs, cairn.history")
            out["vacuum_seconds"] = round(time.perf_counter() - t, 2)
        out["sizes_after_vacuum_mb"] = sizes(dsn)
        load_closed_runs(dsn, a.size // 2, start=a.size + 1, vacuum=False)
        out["sizes_after_refill_half_mb"] = sizes(dsn)
        if a.vacuum_full:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM FULL cairn.runs, cairn.history")
            out["sizes_after_vacuum_full_mb"] = sizes(dsn)
    cluster.drop_db(f"retention_{name}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=20_000, help="closed runs loaded, then purged")
    ap.add_argument("--w2", type=int, default=300, help="W2 workflows (x 10 activities)")
    ap.add_argument("--busy", type=float, default=0.25, help="the purge's busy fraction (the workers' default)")
    ap.add_argument("--chunk", type=int, default=500, help="runs per purge transaction")
    ap.add_argument("--archive", action="store_true", help="archive the purged runs (to a temporary directory)")
    ap.add_argument("--vacuum-full", action="store_true", help="also measure after VACUUM FULL")
    ap.add_argument("--timeout", type=float, default=7200)
    a = ap.parse_args()
    cluster = pgcluster.Cluster()
    cluster.start()
    try:
        base = phase(cluster, "baseline", a, purge=False)
        loaded = phase(cluster, "purge", a, purge=True)
    finally:
        cluster.stop()
    ratio = loaded["w2"]["steps_per_s"] / base["w2"]["steps_per_s"]
    p = loaded["purge"]
    print(f"W2 alone:        {base['w2']['steps_per_s']:8.0f} steps/s ({a.w2} workflows x 10)")
    print(f"W2 with a purge: {loaded['w2']['steps_per_s']:8.0f} steps/s  ratio {ratio:.2f} (>= 0.80 asked)")
    print(f"purge: {p['runs']} runs, {p['events']} events in {p['seconds']:.1f} s = {p['runs_per_s']:.0f} runs/s "
          f"(busy {a.busy}, chunk {a.chunk}, {'archived' if a.archive else 'not archived'}); "
          f"{p['purged_during_w2']} purged during W2" + ("" if p["purge_outlasted_w2"] else
                                                        "  (the purge ended before W2: raise --size)"))
    for k in ("sizes_loaded_mb", "sizes_after_purge_mb", "sizes_after_vacuum_mb", "sizes_after_refill_half_mb",
              "sizes_after_vacuum_full_mb"):
        if k in loaded:
            print(f"{k:28} {loaded[k]}")
    print(json.dumps({"size": a.size, "w2": a.w2, "busy": a.busy, "chunk": a.chunk, "archive": a.archive,
                      "baseline": base, "with_purge": loaded, "ratio": ratio}))


if __name__ == "__main__":
    main()
