"""Retention under load: what purging N closed runs costs W2 (issue 18, item 1).

    .venv/bin/python bench/retention.py --size 20000            # a check that it works
    .venv/bin/python bench/retention.py --size 1000000 --w2 2000  # the measurement

On a private Postgres (bench/pgcluster.py, the settings of every benchmark), in a fresh
database loaded with ``--size`` closed runs of ``one_step`` (six events each, the shape a
real run has, closed 40 days ago, generated in SQL), ``cairn purge --older-than 30d --busy
B`` (the code path of the workers' retention pass, in a process of its own, archiving with
``--archive``) removes the loaded runs while W2 (``--w2`` workflows x 10 sequential
activities, one worker process, as bench/cairn_runner.py runs it) runs ``--repeat`` times
in pairs: once with the purge stopped (SIGSTOP: *alone*), once with it running (SIGCONT).
Paired in one database, one after the other, the two halves of a pair see the same table
sizes and nearly the same machine: a shared machine's drift, which moves steps/s by a third
between runs minutes apart, mostly cancels in the per-pair ratio.

Prints W2's steps/s alone and with the purge per pair, the median ratio (the issue asks at
least 0.8), the purge's rate and how many runs it removed during each W2, the sizes of runs
and history (with their indexes) before the purge, after it, after a plain VACUUM, and after
loading half as many runs again (freed space is reused: the tables do not grow back), and
with ``--vacuum-full`` after VACUUM FULL (the space given back to the OS, under an exclusive
lock). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
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


def measure(cluster: pgcluster.Cluster, a: argparse.Namespace) -> dict[str, Any]:
    dsn = cluster.create_db("retention")
    cairn_db.migrate(dsn)
    t = time.perf_counter()
    load_closed_runs(dsn, a.size)
    print(f"loaded {a.size} closed runs in {time.perf_counter() - t:.1f} s; sizes {sizes(dsn)}",
          file=sys.stderr, flush=True)
    out: dict[str, Any] = {"sizes_loaded_mb": sizes(dsn), "pairs": []}
    archive = tempfile.mkdtemp(prefix="cairn-retention-archive-")
    cmd = [CAIRN, "--database-url", dsn, "purge", "--older-than", "30d", "--yes", "--json",
           "--busy", str(a.busy), "--chunk-size", str(a.chunk)]
    cmd += ["--archive", archive] if a.archive else ["--no-archive"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.send_signal(signal.SIGSTOP)
    for i in range(a.repeat):
        alone = w2(dsn, a.w2)
        proc.send_signal(signal.SIGCONT)
        left_before = count_runs(dsn)
        loaded = w2(dsn, a.w2)
        left_after = count_runs(dsn)
        proc.send_signal(signal.SIGSTOP)
        pair = {"alone": alone["steps_per_s"], "with_purge": loaded["steps_per_s"],
                "ratio": loaded["steps_per_s"] / alone["steps_per_s"], "purged_during": left_before - left_after}
        out["pairs"].append(pair)
        print(f"pair {i + 1}: W2 alone {pair['alone']:.0f}, with the purge {pair['with_purge']:.0f} steps/s "
              f"(ratio {pair['ratio']:.2f}; {pair['purged_during']} runs purged meanwhile)", file=sys.stderr,
              flush=True)
        if left_after == 0:
            print("the purge ended: raise --size for more pairs", file=sys.stderr, flush=True)
            break
    proc.send_signal(signal.SIGCONT)
    stdout, _ = proc.communicate(timeout=a.timeout)
    summary = json.loads(stdout) if stdout.strip() else {"error": f"exit {proc.returncode}"}
    # The purge's rate while it ran: its own seconds include the time it was stopped.
    out["purge"] = {"runs": summary.get("runs"), "events": summary.get("events"),
                    "seconds": summary.get("seconds"), "files": len(summary.get("files") or [])}
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
    cluster.drop_db("retention")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=20_000, help="closed runs loaded, then purged")
    ap.add_argument("--w2", type=int, default=300, help="W2 workflows (x 10 activities)")
    ap.add_argument("--busy", type=float, default=0.25, help="the purge's busy fraction (the workers' default)")
    ap.add_argument("--chunk", type=int, default=500, help="runs per purge transaction")
    ap.add_argument("--archive", action="store_true", help="archive the purged runs (to a temporary directory)")
    ap.add_argument("--vacuum-full", action="store_true", help="also measure after VACUUM FULL")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of W2 runs (alone, with the purge)")
    ap.add_argument("--timeout", type=float, default=7200)
    a = ap.parse_args()
    cluster = pgcluster.Cluster()
    cluster.start()
    try:
        loaded = measure(cluster, a)
    finally:
        cluster.stop()
    pairs = loaded["pairs"]
    ratio = statistics.median(p["ratio"] for p in pairs)
    alone = statistics.median(p["alone"] for p in pairs)
    with_purge = statistics.median(p["with_purge"] for p in pairs)
    print(f"W2 alone:        {alone:8.0f} steps/s, median of {len(pairs)} ({a.w2} workflows x 10)")
    print(f"W2 with a purge: {with_purge:8.0f} steps/s; per-pair ratios "
          f"{', '.join(format(p['ratio'], '.2f') for p in pairs)}: median {ratio:.2f} (>= 0.80 asked)")
    during = sum(p["purged_during"] for p in pairs)
    seconds = sum(a.w2 * 10 / p["with_purge"] for p in pairs)
    p = loaded["purge"]
    print(f"purge: {p['runs']} runs, {p['events']} events (busy {a.busy}, chunk {a.chunk}, "
          f"{'archived' if a.archive else 'not archived'}); {during} runs removed during the W2 runs beside it, "
          f"{during / seconds:.0f} runs/s")
    for k in ("sizes_loaded_mb", "sizes_after_purge_mb", "sizes_after_vacuum_mb", "sizes_after_refill_half_mb",
              "sizes_after_vacuum_full_mb"):
        if k in loaded:
            print(f"{k:28} {loaded[k]}")
    print(json.dumps({"size": a.size, "w2": a.w2, "busy": a.busy, "chunk": a.chunk, "archive": a.archive,
                      "measured": loaded, "ratio": ratio}))


if __name__ == "__main__":
    main()
