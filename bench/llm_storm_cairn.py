"""cairn's runner of the LLM storm workload (protocol: bench/README.md, workload ``LLM``).

    python bench/llm_storm_cairn.py --dsn DSN --workload LLM --size 1000 --workers 3 \
        --param llm_base_url=http://127.0.0.1:PORT/v1 --param llm_rpm=1800 --param deadline_s=300

Migrates the fresh database, writes a providers file naming the storm provider with its
published limit: ``rpm``, counted over a sliding minute only (``rate_enforcement:
sliding``) and not counting the requests it answers 429 (``rate_counts_throttled:
false``); nothing else set (the breaker and every other setting are cairn's defaults),
starts ``--workers`` real ``cairn worker -m llm_storm_flows`` processes with
``CAIRN_LLM_PROVIDERS`` pointing at it, starts N workflows of 3 sequential ``chat()``
calls, and waits until all closed or the deadline.
The provider's log is read by bench/run.py (bench/storm_metrics.py); this runner adds
what only the database knows: each completed call's ``attempt``, the breaker's
transitions and its ``permitted_calls_in_half_open``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llm_storm_flows as flows  # noqa: E402
import procs  # noqa: E402
import psycopg  # noqa: E402

from cairn import Client  # noqa: E402
from cairn.store import db as cairn_db  # noqa: E402

CAIRN = str(Path(sys.executable).parent / "cairn")
START_CONCURRENCY = 16  # concurrent client.start() calls while enqueueing
POLL_SECONDS = 0.5      # how often the runner counts closed runs
MAX_LOG_LINES = 400     # of each worker's log copied into the runner's


def log(msg: str) -> None:
    print(f"[llm_storm_cairn {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# How the storm provider enforces its rpm, as it documents: over a sliding minute only, 429s
# not counted (ProviderConfig's defaults assume OpenAI's: shorter periods, 429s counted).
PUBLISHED_LIMIT = {"rate_enforcement": "sliding", "rate_counts_throttled": False}


def providers_file(base_url: str, rpm: int, published: bool = True) -> str:
    """The providers file: the provider's published limit (rpm over a sliding minute, 429s not
    counted: bench/storm_provider.py), every other setting default; ``published=False``: rpm
    only (a provider configured as OpenAI documents its limits)."""
    fd, path = tempfile.mkstemp(prefix="storm-providers-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"providers": [{"name": "storm", "base_url": base_url, "models": [flows.MODEL], "rpm": rpm,
                                  **(PUBLISHED_LIMIT if published else {})}]}, f)
    return path


class WorkerProc:
    """One ``cairn worker`` process, its stderr in a temporary file."""

    def __init__(self, dsn: str, index: int, env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"storm-cairn-w{index}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen([CAIRN, "--database-url", dsn, "worker", "-m", "llm_storm_flows",
                                      "--identity", f"w{index}"], cwd=str(HERE), env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.log)

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_started(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while " running " not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start (exit {self.proc.poll()}):\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        procs.terminate(self.proc, 30)
        lines = self.text().splitlines()
        errors = [line for line in lines if " ERROR " in line or "Traceback" in line]
        if errors:
            log(f"worker {self.proc.pid}: {len(errors)} error lines, first: {errors[0][:300]}")
        # The worker's whole log goes into the runner's (kept by bench/run.py), capped.
        text = "\n".join(lines[-MAX_LOG_LINES:])
        log(f"worker {self.proc.pid} log (last {MAX_LOG_LINES} lines):\n{text}")
        self.log.close()
        os.unlink(self.log.name)


async def enqueue(dsn: str, n: int, calls: int) -> None:
    client = await Client.connect(dsn, max_size=START_CONCURRENCY)
    sem = asyncio.Semaphore(START_CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await client.start(flows.storm, f"s{i}", calls, id=f"s{i}")

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def wait_closed(conn: psycopg.Connection[Any], n: int, deadline: float, workers: list[WorkerProc]) -> None:
    last = -1
    while time.time() < deadline:
        row = conn.execute("SELECT count(*) FROM cairn.runs WHERE status <> 'running'").fetchone()
        closed = row[0] if row else 0
        if closed != last:
            log(f"{closed}/{n} closed")
            last = closed
        if closed >= n:
            return
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker {w.proc.pid} exited with {w.proc.returncode}:\n{w.text()[-2000:]}")
        time.sleep(POLL_SECONDS)


def collect(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What only the database knows, taken before the database is dropped."""
    runs = conn.execute("SELECT workflow_id, status, extract(epoch FROM closed_at)::float8 FROM cairn.runs").fetchall()
    completed = {wid: at for wid, status, at in runs if status == "completed"}
    statuses: dict[str, int] = {}
    for _, status, _ in runs:
        statuses[status] = statuses.get(status, 0) + 1
    # Each completed call's attempt: the chat result records it, and its text is "ok <key>".
    attempts: dict[str, int] = {}
    for (data,) in conn.execute("SELECT data FROM cairn.history WHERE type = 'ActivityCompleted'"):
        result = data.get("result") or {}
        text = str(result.get("text") or "")
        if text.startswith("ok "):
            attempts[text[3:]] = int(result.get("attempt") or data.get("attempt") or 1)
    events = [[f, t, at, reason] for f, t, at, reason in conn.execute(
        "SELECT from_state, to_state, extract(epoch FROM at)::float8, reason FROM cairn.breaker_events ORDER BY id")]
    breakers = [{"name": name, "state": state, "config": config, "successful": ok, "failed": failed,
                 "not_permitted": refused}
                for name, state, config, ok, failed, refused in conn.execute(
                    "SELECT name, state, config, successful, failed, not_permitted FROM cairn.breakers")]
    permitted = None
    if breakers:
        permitted = int((breakers[0]["config"] or {}).get("permitted_calls_in_half_open") or 0) or None
    throttled = conn.execute("SELECT count(*) FILTER (WHERE throttled_seconds > 0), coalesce(sum(throttled_seconds), 0)"
                             " FROM cairn.activity_tasks").fetchone()
    return {"completed": completed, "statuses": statuses, "attempts": attempts, "breaker_events": events,
            "breakers": breakers, "permitted_calls_in_half_open": permitted,
            "activity_tasks_throttled": throttled[0] if throttled else None,
            "throttled_seconds_total": float(throttled[1]) if throttled else None}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--workload", default="LLM")
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--redis", default=None)
    p.add_argument("--param", action="append", default=[])
    a = p.parse_args()
    params = dict(kv.split("=", 1) for kv in a.param if "=" in kv)
    if a.workload != "LLM":
        print(json.dumps({"system": "cairn", "workload": a.workload, "error": "this runner only runs LLM"}))
        return 0
    base_url, rpm = params["llm_base_url"], int(params["llm_rpm"])
    deadline_s, calls = float(params.get("deadline_s", 300)), int(params.get("calls", 3))
    cairn_db.migrate(a.dsn)
    # --param cairn:llm_published=0: rpm only, ProviderConfig's defaults for the rest.
    published = params.get("llm_published", "1") != "0"
    path = providers_file(base_url, rpm, published)
    env = dict(os.environ, CAIRN_LLM_PROVIDERS=path, PYTHONPATH=str(HERE))
    workers = [WorkerProc(a.dsn, i, env) for i in range(a.workers)]
    try:
        for w in workers:
            w.wait_started()
        log(f"{a.workers} workers running; starting {a.size} workflows x {calls} calls, rpm {rpm}, "
            f"deadline {deadline_s:g} s")
        window_start = time.time()
        t0 = time.perf_counter()
        asyncio.run(enqueue(a.dsn, a.size, calls))
        log(f"enqueued in {time.perf_counter() - t0:.1f} s")
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            wait_closed(conn, a.size, window_start + deadline_s, workers)
            seconds = time.perf_counter() - t0
            got = collect(conn)
    finally:
        for w in workers:
            w.stop()
        os.unlink(path)
    done = [at - window_start for at in got["completed"].values() if at is not None]
    out = {
        "system": "cairn", "workload": "LLM", "steps": len(got["completed"]) * calls,
        "seconds": round(max(done) if done else seconds, 3), "latencies_ms": None,
        "worker_pids": [w.proc.pid for w in workers],
        "notes": (f"{a.workers} x `cairn worker -m llm_storm_flows` at default settings (workflow concurrency 4, "
                  "activity concurrency 100); chat() with its default retry policy (0.5 s initial, x2 up to 8 s, "
                  f"unlimited attempts), throttle budget 600 s; providers file with rpm={rpm}, "
                  + ("rate_enforcement=sliding, rate_counts_throttled=false as the provider publishes" if published
                     else "nothing else (paced, 429s counted: ProviderConfig's defaults)")
                  + " (breaker: BreakerConfig defaults); 429 Retry-After: the chat activity reschedules to it "
                  "without burning an attempt"),
        "extra": {"window_start": window_start, "deadline_s": deadline_s, "calls": calls, "size": a.size, **got},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
