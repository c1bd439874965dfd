"""What a local activity saves per call, against a normal activity.

    CAIRN_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/local_activity.py [--workflows 20] [--calls 20] [--rounds 3]

Creates a fresh database on that server (dropped at the end), starts one in-process worker,
and runs ``--workflows`` workflows one after another, each making ``--calls`` tiny activity
calls in sequence (an ``async def`` returning its argument plus one), first as normal
activities (``workflow.execute_activity``), then as local activities
(``workflow.execute_local_activity``), ``--rounds`` times each, alternating. For each mode
it prints the median over rounds of the wall time per call (the workflow's start and
result included, divided by its calls) and the database commits per call
(``pg_stat_database.xact_commit`` of the bench database: each round starts a client and a
worker and stops them, so that every session's statistics are flushed; the commits of a
round without workflows, their start and stop, are subtracted; the worker's idle polls
and the client's starts are included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cairn import Client, Worker, activity, workflow
from cairn.store import db

TIMEOUT = 10


@activity.defn
async def tiny(x: int) -> int:
    return x + 1


@workflow.defn
async def normal_calls(calls: int) -> int:
    x = 0
    for _ in range(calls):
        x = await workflow.execute_activity(tiny, x, start_to_close_timeout=TIMEOUT)
    return x


@workflow.defn
async def local_calls(calls: int) -> int:
    x = 0
    for _ in range(calls):
        x = await workflow.execute_local_activity(tiny, x, start_to_close_timeout=TIMEOUT)
    return x


def _with_db(url: str, name: str) -> str:
    return f"{url.rsplit('/', 1)[0]}/{name}"


def commits(admin_url: str, name: str) -> int:
    """The bench database's committed transactions, once every session on it has ended
    (a backend flushes its statistics when it exits; an idle one only every 10 s)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for _ in range(200):
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.05)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


async def one_round(url: str, admin_url: str, name: str, fn: object, workflows: int,
                    calls: int) -> tuple[float, int]:
    """A worker and a client, started for the round and stopped after it, run the workflows
    one after another: (seconds, commits), the workers' start and stop included."""
    before = commits(admin_url, name)
    async with await Client.connect(url) as client, \
            Worker(url, workflows=[normal_calls, local_calls], activities=[tiny]):
        began = time.perf_counter()
        for _ in range(workflows):
            handle = await client.start(fn, calls, id=f"bench-{uuid.uuid4().hex}")  # type: ignore[call-overload]
            assert await handle.result(timeout=60) == calls
        elapsed = time.perf_counter() - began
    return elapsed, commits(admin_url, name) - before


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    admin_url = os.environ.get("CAIRN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"cairn_bench_local_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _with_db(admin_url, name)
        db.migrate(url)
        results: dict[str, list[tuple[float, float]]] = {"activity": [], "local activity": []}
        # What a round costs with no workflow: the client's and the worker's start and stop.
        _, overhead = await one_round(url, admin_url, name, normal_calls, 0, 0)
        await one_round(url, admin_url, name, normal_calls, 2, 2)  # warm up both paths
        await one_round(url, admin_url, name, local_calls, 2, 2)
        total = args.workflows * args.calls
        for _ in range(args.rounds):
            for mode, fn in (("activity", normal_calls), ("local activity", local_calls)):
                seconds, n = await one_round(url, admin_url, name, fn, args.workflows, args.calls)
                results[mode].append((seconds / total * 1e3, (n - overhead) / total))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"{args.workflows} workflows x {args.calls} calls, one at a time, {args.rounds} rounds (median)")
    print(f"{'mode':<16} {'ms/call':>8} {'commits/call':>13} {'commits/workflow':>17}")
    for mode, rows in results.items():
        ms = statistics.median(r[0] for r in rows)
        per = statistics.median(r[1] for r in rows)
        print(f"{mode:<16} {ms:>8.3f} {per:>13.2f} {per * args.calls:>17.1f}")
    normal = statistics.median(r[0] for r in results["activity"])
    local = statistics.median(r[0] for r in results["local activity"])
    print(f"saving per call: {normal - local:.3f} ms ({normal / local:.1f}x faster)")


if __name__ == "__main__":
    asyncio.run(main())
