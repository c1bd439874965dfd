"""The payload store: what a 100-turn LLM agent writes, with the store and without (issue 18,
item 2).

    .venv/bin/python bench/payloads.py                          # 100 turns, 2 KB messages, 2 runs each way
    .venv/bin/python bench/payloads.py --turns 50 --size 1000 --runs 1

On a private Postgres (bench/pgcluster.py, the settings of every benchmark), once per mode,
each in a fresh database: one ``cairn worker -m payload_flows`` process and a fake provider
(``cairn fake-llm``); ``--runs`` agents (bench/payload_flows.agent: ``--turns`` calls, each
adding a user message and an answer of ``--size`` characters of words to the conversation
that the next call sends whole; each run a conversation of its own, the system prompt
shared) run one after the other. Modes:

- *store*: as shipped (``CAIRN_STORE_PAYLOAD_BYTES`` at its default, 8 KiB): each message
  stored once, by reference;
- *today*: ``CAIRN_STORE_PAYLOAD_BYTES=0``, every payload inline as before migration 0022
  (``CAIRN_MAX_PAYLOAD_BYTES`` raised to 64 MiB, so that the last calls' lists are not
  refused).

Measured around the runs: bytes written, as the growth of ``pg_total_relation_size``
(indexes and TOAST included) of history, inbox, activity_tasks, payloads and run_payloads;
WAL, as ``pg_wal_lsn_diff`` of ``pg_current_wal_lsn()`` (the private cluster has no other
writer); wall time per run. Also per run: history bytes (the events' ``data``) and its
largest event. One JSON line per mode at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import payload_flows as flows  # noqa: E402
import pgcluster  # noqa: E402
import psycopg  # noqa: E402

from cairn import Client  # noqa: E402
from cairn.store import db as cairn_db  # noqa: E402

CAIRN = str(Path(sys.executable).parent / "cairn")
TABLES = ("history", "inbox", "activity_tasks", "payloads", "run_payloads")
MODES = {"store": {}, "today": {"CAIRN_STORE_PAYLOAD_BYTES": "0", "CAIRN_MAX_PAYLOAD_BYTES": str(64 << 20)}}


def sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    out = {}
    for table in TABLES:
        row = conn.execute("SELECT pg_total_relation_size(to_regclass(%s))", (f"cairn.{table}",)).fetchone()
        out[table] = int(row[0] or 0) if row else 0
    return out


def wal(conn: psycopg.Connection[Any]) -> int:
    conn.execute("CHECKPOINT")  # so that neither side's total includes the other's full-page images
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()
    assert row is not None
    return int(row[0])


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([CAIRN, "fake-llm", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError("the fake provider did not start")


def mode(cluster: pgcluster.Cluster, name: str, a: argparse.Namespace, base_url: str) -> dict[str, Any]:
    dsn = cluster.create_db(f"payloads_{name}")
    cairn_db.migrate(dsn)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"providers": [{"name": "fake", "base_url": base_url, "models": [flows.MODEL]}]}, f)
    env = {**os.environ, "CAIRN_LLM_PROVIDERS": f.name, **MODES[name]}
    log = tempfile.NamedTemporaryFile("w+", prefix=f"payloads-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    worker = subprocess.Popen([CAIRN, "--database-url", dsn, "worker", "-m", "payload_flows"], cwd=str(HERE),
                              env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        with cluster.connect(f"payloads_{name}") as conn:
            before, wal_before = sizes(conn), wal(conn)
            times = []
            for i in range(a.runs):
                began = time.monotonic()
                result = asyncio.run(run_one(dsn, i, a))
                times.append(time.monotonic() - began)
                if result.get("messages") != 2 * a.turns + 1:
                    tail = Path(log.name).read_text()[-3000:]
                    raise RuntimeError(f"{name}: run {i} did not complete: {result}\n{tail}")
            after, wal_after = sizes(conn), wal(conn)
            row = conn.execute("SELECT sum(octet_length(data::text)), max(octet_length(data::text)) "
                               "FROM cairn.history").fetchone()
            assert row is not None
            stored = conn.execute("SELECT count(*), coalesce(sum(octet_length(compressed)), 0), coalesce(sum(size), 0) "
                                  "FROM cairn.payloads").fetchone()
            assert stored is not None
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        os.unlink(f.name)
    written = {t: after[t] - before[t] for t in TABLES}
    return {"mode": name, "runs": a.runs, "turns": a.turns, "size": a.size,
            "bytes_written": sum(written.values()), "by_table": written, "wal_bytes": wal_after - wal_before,
            "history_data_bytes_per_run": int(row[0] or 0) // a.runs, "largest_event_bytes": int(row[1] or 0),
            "payloads": int(stored[0]), "payload_bytes_compressed": int(stored[1]),
            "payload_bytes": int(stored[2]), "seconds_per_run": sorted(times)[len(times) // 2]}


async def run_one(dsn: str, i: int, a: argparse.Namespace) -> dict[str, Any]:
    async with await Client.connect(dsn) as client:
        handle = await client.start(flows.agent, a.turns, a.size, i, id=f"agent-{i}")
        return dict(await handle.result(timeout=a.timeout))


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", type=int, default=100)
    p.add_argument("--size", type=int, default=2000, help="characters per message (default 2000)")
    p.add_argument("--runs", type=int, default=2, help="agents run one after the other, per mode")
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args()
    cluster = pgcluster.Cluster()
    cluster.start()
    fake, base_url = start_fake()
    results = []
    try:
        for name in MODES:
            results.append(mode(cluster, name, a, base_url))
    finally:
        fake.kill()
        cluster.stop()
    print(f"{a.runs} agent(s) of {a.turns} turns, messages of {a.size} characters; per run:")
    for r in results:
        n = r["runs"]
        print(f"  {r['mode']:5}  written {mb(r['bytes_written'] / n)}  WAL {mb(r['wal_bytes'] / n)}  "
              f"history data {mb(r['history_data_bytes_per_run'])}  largest event {r['largest_event_bytes']:,} B  "
              f"payloads {r['payloads'] // n} ({mb(r['payload_bytes_compressed'] / n)} compressed, "
              f"{mb(r['payload_bytes'] / n)} raw)  {r['seconds_per_run']:.1f} s")
    store, today = results
    print(f"  today / store: written {today['bytes_written'] / max(store['bytes_written'], 1):.1f}x, "
          f"WAL {today['wal_bytes'] / max(store['wal_bytes'], 1):.1f}x")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
