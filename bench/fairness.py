"""Fairness under a flood: how long tenant B's runs wait for their first claim while tenant
A's backlog fills the queue (issue 18, item 3).

    .venv/bin/python bench/fairness.py                      # 10,000 A runs, 10 and 100 B runs
    .venv/bin/python bench/fairness.py --flood 2000 --b 10  # a quick check

On a private Postgres (bench/pgcluster.py, the settings of every benchmark), each phase in a
fresh database with one worker process (bench/cairn_worker.py, the CLI's defaults: 4 workflow
pollers), workflow ``one_step`` (one activity):

1. *alone*: the worker idle; B's runs (fairness key ``tenant-b``) started at once (8 starts
   in flight, as bench/cairn_runner.py enqueues);
2. *flood*: ``--flood`` runs of A (key ``tenant-a``) queued first, the worker started and
   busy with them (``--warm`` of them done), then B's runs started as in 1;
3. *flood, no keys* (unless ``--no-baseline``): the same without fairness keys: B's runs
   queue behind A's backlog, as before this change.

A run's wait is from its start (``runs.created_at``) to its first claim (the time of its
``WorkflowTaskStarted`` marker), both the database's clock; it is also split at the moment
``start()`` returned: B's own start (its commit, and the other starts of its key it waited
for on the key's place row) and the claim after it. Prints B's p50 and p95 wait in
each phase, the ratio flood / alone (the issue asks p50 within 2x), how much of A's backlog
was still queued when B's last run was claimed (A was still flooding), and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cairn_flows  # noqa: E402
import cairn_runner  # noqa: E402
import pgcluster  # noqa: E402
import psycopg  # noqa: E402

from cairn import Client, Priority  # noqa: E402
from cairn.store import db as cairn_db  # noqa: E402

WAITS = """
SELECT r.workflow_id, (h.data ->> 'time')::float8 - extract(epoch FROM r.created_at) AS wait
FROM cairn.runs r JOIN cairn.history h ON h.run_id = r.run_id AND h.seq = 2
WHERE r.workflow_id LIKE %(prefix)s
"""
SPLIT = """
SELECT r.workflow_id, extract(epoch FROM r.created_at)::float8, (h.data ->> 'time')::float8
FROM cairn.runs r JOIN cairn.history h ON h.run_id = r.run_id AND h.seq = 2
WHERE r.workflow_id LIKE %(prefix)s
"""
# Per B run: how many of A's runs were first claimed between B's start and B's own first
# claim (what fairness decides), as opposed to how long the busy worker took to claim again.
AHEAD = """
SELECT (SELECT count(*) FROM cairn.runs a JOIN cairn.history ha ON ha.run_id = a.run_id AND ha.seq = 2
        WHERE a.workflow_id LIKE 'a-%%'
          AND (ha.data ->> 'time')::float8 > extract(epoch FROM b.created_at)
          AND (ha.data ->> 'time')::float8 < (hb.data ->> 'time')::float8)
FROM cairn.runs b JOIN cairn.history hb ON hb.run_id = b.run_id AND hb.seq = 2
WHERE b.workflow_id LIKE 'b-%%'
"""
UNCLAIMED = """
SELECT count(*) FROM cairn.runs r
WHERE r.workflow_id LIKE 'a-%%' AND NOT EXISTS (
    SELECT 1 FROM cairn.history h WHERE h.run_id = r.run_id AND h.seq = 2
      AND (h.data ->> 'time')::float8 <= %(at)s)
"""


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


async def enqueue(dsn: str, prefix: str, n: int, key: str | None, weight: float | None = None) -> dict[str, float]:
    """``n`` runs of one_step, 8 starts in flight, with the fairness key ``key`` (and ``weight``);
    returns when each start returned (this host's clock: the database's, on this machine)."""
    client = await Client.connect(dsn)
    returned: dict[str, float] = {}
    try:
        sem = asyncio.Semaphore(8)
        place = Priority(fairness_key=key, fairness_weight=weight) if key else None

        async def one(i: int) -> None:
            async with sem:
                await client.start(cairn_flows.one_step, i, id=f"{prefix}-{i}", queue="default", priority=place)
                returned[f"{prefix}-{i}"] = time.time()

        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()
    return returned


def wait_claimed(dsn: str, prefix: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(query(dsn, WAITS, {"prefix": f"{prefix}-%"})) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{prefix}: not all {n} runs claimed in {timeout} s")
        time.sleep(0.05)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]


def phase(cluster: pgcluster.Cluster, name: str, a: argparse.Namespace, b: int, *, flood: bool,
          keys: bool) -> dict[str, Any]:
    db = f"fairness_{name}_{b}"
    dsn = cluster.create_db(db)
    cairn_db.migrate(dsn)
    if flood:
        t = time.perf_counter()
        asyncio.run(enqueue(dsn, "a", a.flood, "tenant-a" if keys else None))
        cairn_runner.log(f"{name}: {a.flood} A runs queued in {time.perf_counter() - t:.1f} s")
    worker = cairn_runner.WorkerProc(dsn, f"fair-{name}", **cairn_runner.worker_opts(cairn_runner.DEFAULTS))
    try:
        worker.wait_started()
        if flood:  # busy with A: the claims run back to back
            wait_claimed(dsn, "a", a.warm, a.timeout)
        returned = asyncio.run(enqueue(dsn, "b", b, "tenant-b" if keys else None, a.b_weight))
        wait_claimed(dsn, "b", b, a.timeout)
        waits = [w * 1000 for _, w in query(dsn, WAITS, {"prefix": "b-%"})]
        # The wait in two: B's own start (created_at to start() returning: its commit, and
        # the other starts of its key it waited for) and the claim after it.
        split = query(dsn, SPLIT, {"prefix": "b-%"})
        own = [(returned[w] - created) * 1000 for w, created, _ in split]
        then = [(claimed - returned[w]) * 1000 for w, _, claimed in split]
        last = max(w for _, w in query(dsn, "SELECT r.workflow_id, (h.data ->> 'time')::float8 FROM cairn.runs r "
                                            "JOIN cairn.history h ON h.run_id = r.run_id AND h.seq = 2 "
                                            "WHERE r.workflow_id LIKE 'b-%'"))
        a_left = int(query(dsn, UNCLAIMED, {"at": last})[0][0]) if flood else 0
        ahead = [int(n) for (n,) in query(dsn, AHEAD)] if flood else [0]
    finally:
        worker.stop()
        cluster.drop_db(db)
    return {"b": b, "p50_ms": statistics.median(waits), "p95_ms": pct(waits, 0.95), "max_ms": max(waits),
            "start_p50_ms": statistics.median(own), "claim_after_start_p50_ms": statistics.median(then),
            "a_unclaimed_at_b_last": a_left, "a_claimed_ahead_p50": statistics.median(ahead),
            "a_claimed_ahead_max": max(ahead)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=10_000, help="A's runs queued before B's start")
    ap.add_argument("--b", type=int, nargs="+", default=[10, 100], help="B's runs (one measurement per size)")
    ap.add_argument("--b-weight", type=float, default=None, help="B's fairness weight (default 1, as A's)")
    ap.add_argument("--warm", type=int, default=200, help="A's runs claimed before B starts")
    ap.add_argument("--no-baseline", action="store_true", help="skip the flood without fairness keys")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    cluster = pgcluster.Cluster()
    cluster.start()
    results: list[dict[str, Any]] = []
    try:
        for b in a.b:
            alone = phase(cluster, "alone", a, b, flood=False, keys=True)
            flood = phase(cluster, "flood", a, b, flood=True, keys=True)
            base = None if a.no_baseline else phase(cluster, "nokeys", a, b, flood=True, keys=False)
            results.append({"b": b, "alone": alone, "flood": flood, "flood_without_keys": base,
                            "ratio_p50": flood["p50_ms"] / alone["p50_ms"],
                            "ratio_p95": flood["p95_ms"] / alone["p95_ms"]})
    finally:
        cluster.stop()
    for r in results:
        weights = "equal weights" if a.b_weight is None else f"B's weight {a.b_weight:g}"
        print(f"B = {r['b']} runs, A = {a.flood} runs queued (fairness keys tenant-a, tenant-b; {weights})")
        for label, key in (("alone", "alone"), ("A flooding", "flood"), ("A flooding, no keys", "flood_without_keys")):
            x = r[key]
            if x is None:
                continue
            left = (f"; A unclaimed when B's last was claimed: {x['a_unclaimed_at_b_last']}; A claimed between "
                    f"a B run's start and its claim: p50 {x['a_claimed_ahead_p50']:g}, max {x['a_claimed_ahead_max']}"
                    ) if key != "alone" else ""
            print(f"  {label:20} B wait p50 {x['p50_ms']:8.1f} ms  p95 {x['p95_ms']:8.1f} ms  max {x['max_ms']:8.1f} ms"
                  f" (its start {x['start_p50_ms']:.1f} ms, then the claim {x['claim_after_start_p50_ms']:.1f} ms)"
                  + left)
        print(f"  ratio flood / alone: p50 {r['ratio_p50']:.2f}x  p95 {r['ratio_p95']:.2f}x  (p50 within 2x asked)")
    print(json.dumps({"flood": a.flood, "warm": a.warm, "b_weight": a.b_weight, "results": results}))


if __name__ == "__main__":
    main()
