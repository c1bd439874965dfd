"""The cairn runner of the benchmark (protocol: bench/README.md).

    python bench/cairn_runner.py --dsn DSN --workload W1 --size 5000 --workers 1 [--param k=v ...]

Migrates the fresh database, runs one workload with worker subprocesses
(``bench/cairn_worker.py``, the public ``cairn.Worker`` on uvloop), and prints one JSON line.
Besides W1-W6 it runs the cairn-only extras ``MEM`` (worker RSS against its cache size) and
``CLAIM`` (claim query latency on an empty database and with a million finished runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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

import cairn_flows as flows  # noqa: E402
import procs  # noqa: E402
import psycopg  # noqa: E402

from cairn import Client  # noqa: E402
from cairn.store import db as cairn_db  # noqa: E402

WORKER_SCRIPT = str(HERE / "cairn_worker.py")
DEFAULTS = {
    # Worker settings used for every workload unless a --param overrides them.
    "workflow_concurrency": 4,   # the CLI default
    "activity_concurrency": 100,
    "cache_size": 1000,
    "start_concurrency": 16,   # concurrent client.start() calls while enqueueing
}
# Untimed warm-up, as for every system (bench/run.py passes --param warmup=N; the peers'
# defaults are in bench/peers/_common.py): W3 one-activity workflows, W5 3-step workflows.
WARMUP = {"W3": 5, "W5": 1}
W5_WARMUP_STEPS = 3


def log(msg: str) -> None:
    print(f"[cairn_runner {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ workers


class WorkerProc:
    def __init__(self, dsn: str, name: str, **opts: Any) -> None:
        self.name = name
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix=f"cairn-bench-{name}-", suffix=".log", delete=False)
        args = [sys.executable, WORKER_SCRIPT, "--dsn", dsn]
        for k, v in opts.items():
            if v is not None:
                args += [f"--{k.replace('_', '-')}", str(v)]
        self.started_at = time.time()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log_file, cwd=str(HERE.parent))
        self.ready_at: float | None = None
        self.stats = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def wait_started(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while " running" not in self.text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start:\n{self.text()[-3000:]}")
            time.sleep(0.02)
        self.ready_at = time.time()
        return self.ready_at - self.started_at

    def stop(self, timeout: float = 60) -> None:
        procs.terminate(self.proc, timeout)
        self.cleanup()

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        text = self.text()
        stats = [line for line in text.splitlines() if " stats WorkerStats(" in line]
        if stats:
            self.stats = stats[-1].split(" stats ", 1)[1]
            log(f"worker {self.name}: {self.stats}")
        errors = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
        if errors:
            log(f"worker {self.name}: {len(errors)} error lines, first: {errors[0][:300]}")
        self.log_file.close()
        os.unlink(self.log_file.name)


def worker_opts(p: dict[str, Any], **over: Any) -> dict[str, Any]:
    opts = {"workflow_concurrency": p["workflow_concurrency"], "activity_concurrency": p["activity_concurrency"],
            "cache_size": p["cache_size"]}
    opts.update(over)
    return opts


# ------------------------------------------------------------------ helpers


async def enqueue(client: Client, wf: Any, argss: list[tuple[Any, ...]], concurrency: int,
                  prefix: str, queue: str = "default") -> list[str]:
    """Starts one run per argument tuple, ``concurrency`` starts in flight; returns run ids."""
    sem = asyncio.Semaphore(concurrency)
    out: list[str] = [""] * len(argss)

    async def one(i: int, args: tuple[Any, ...]) -> None:
        async with sem:
            h = await client.start(wf, *args, id=f"{prefix}-{i}", queue=queue)
            out[i] = str(h.run_id)

    await asyncio.gather(*(one(i, a) for i, a in enumerate(argss)))
    return out


class CloseWatcher:
    """Counts runs closing, from the ``cairn_closed`` NOTIFY (no polling transactions)."""

    def __init__(self, dsn: str, expected: set[str]) -> None:
        self.dsn = dsn
        self.expected = set(expected)
        self.closed: dict[str, float] = {}
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CloseWatcher:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def _run(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute("LISTEN cairn_closed")
            self.ready.set()
            async for note in conn.notifies():
                run_id = note.payload.partition(" ")[0]  # then the outcome, if small
                if run_id in self.expected and run_id not in self.closed:
                    self.closed[run_id] = time.time()
                    if len(self.closed) == len(self.expected):
                        self.done.set()

    async def wait(self, timeout: float) -> None:
        """Waits for all closes; every 2 s checks the table too (covers a missed NOTIFY)."""
        deadline = time.monotonic() + timeout
        while not self.done.is_set():
            try:
                await asyncio.wait_for(self.done.wait(), 2.0)
            except TimeoutError:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as c:
                    row = await (await c.execute(
                        "SELECT count(*) FROM cairn.runs WHERE status = 'running' AND run_id = ANY(%s::uuid[])",
                        [list(self.expected)])).fetchone()
                if row and row[0] == 0:
                    now = time.time()
                    for r in self.expected:
                        self.closed.setdefault(r, now)
                    self.done.set()
                elif time.monotonic() > deadline:
                    raise RuntimeError(f"timed out: {len(self.closed)}/{len(self.expected)} runs closed") from None


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Runs one statement (or several separated by ";\n", each with the same named params)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        rows: list[tuple[Any, ...]] = []
        stmts = [x for x in sql.split(";\n") if x.strip()]
        for stmt in stmts:
            cur = c.execute(stmt, params if len(stmts) == 1 or "%(" in stmt else None)
            rows = cur.fetchall() if cur.description else []
        return rows


def next_xid(dsn: str) -> int:
    """The next transaction id, read without taking one: its delta over a span counts the
    transactions that wrote or locked a row (read-only ones take no id)."""
    return int(query(dsn, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")[0][0])


async def first_claim_time(dsn: str, run_ids: list[str]) -> float | None:
    rows = query(dsn, "SELECT extract(epoch FROM min(at)) FROM cairn.history WHERE type = 'WorkflowTaskStarted' "
                      "AND run_id = ANY(%s::uuid[])", [run_ids])
    return float(rows[0][0]) if rows and rows[0][0] is not None else None


async def failed_runs(dsn: str) -> int:
    rows = query(dsn, "SELECT count(*) FROM cairn.runs WHERE status <> 'completed' AND status <> 'running'")
    return int(rows[0][0])


# ------------------------------------------------------------------ throughput: W1 W2 W4


async def drain(dsn: str, p: dict[str, Any], workers: int, wf: Any, argss: list[tuple[Any, ...]],
                steps: int, workload: str) -> dict[str, Any]:
    """Enqueues a backlog with no worker running, then drains it with ``workers`` processes."""
    completed = int(p.get("completed", 0))  # diagnostics: finished runs already in the tables
    if completed:
        bulk_completed(dsn, completed, int(p.get("events", 6)))
    client = await Client.connect(dsn, max_size=p["start_concurrency"])
    try:
        t, t_epoch = time.perf_counter(), time.time()
        run_ids = await enqueue(client, wf, argss, p["start_concurrency"], workload.lower())
        enqueue_s = time.perf_counter() - t
        if int(p.get("analyze", 0)):  # diagnostics: statistics that know the backlog (as autovacuum's would)
            query(dsn, "ANALYZE")
        log(f"{workload}: enqueued {len(run_ids)} runs in {enqueue_s:.2f} s; starting {workers} worker(s)")
        async with CloseWatcher(dsn, set(run_ids)) as watch:
            t0 = time.time()
            procs = [WorkerProc(dsn, f"w{i}", **worker_opts(p)) for i in range(workers)]
            try:
                await watch.wait(timeout=float(p.get("timeout", 1800)))
                t_end = max(watch.closed.values())
            finally:
                for w in procs:
                    w.stop()
        first = await first_claim_time(dsn, run_ids)
        bad = await failed_runs(dsn)
    finally:
        await client.close()
    seconds = t_end - t0
    drain_s = t_end - first if first else None
    return {
        "steps": steps, "seconds": seconds, "worker_pids": [w.pid for w in procs],
        "notes": (f"{workers} worker process(es), workflow_concurrency={p['workflow_concurrency']}, "
                  f"activity_concurrency={p['activity_concurrency']}, cache_size={p['cache_size']}; "
                  f"window from launching the workers (start-up included) to the last close; "
                  f"enqueue {enqueue_s:.2f} s not timed (extra.enqueue_and_drain_s: first start to last close)"
                  + (f"; {bad} runs did not complete" if bad else "")),
        "extra": {"enqueue_seconds": enqueue_s, "enqueue_and_drain_s": t_end - t_epoch,
                  "drain_seconds_from_first_claim": drain_s,
                  "workflows": len(run_ids), "failed_runs": bad},
    }


async def w1(dsn: str, n: int, k: int, p: dict[str, Any]) -> dict[str, Any]:
    return await drain(dsn, p, k, flows.one_step, [(i,) for i in range(n)], n, "W1")


async def w2(dsn: str, n: int, k: int, p: dict[str, Any]) -> dict[str, Any]:
    steps = int(p.get("steps", 10))
    return await drain(dsn, p, k, flows.sequence, [(i, steps) for i in range(n)], n * steps, "W2")


async def w4(dsn: str, n: int, k: int, p: dict[str, Any]) -> dict[str, Any]:
    width = int(p.get("width", 20))
    return await drain(dsn, p, k, flows.fan_out, [(i, width) for i in range(n)], n * width, "W4")


# ------------------------------------------------------------------ latency: W3, W5


async def w3(dsn: str, n: int, k: int, p: dict[str, Any]) -> dict[str, Any]:
    warmup = int(p.get("warmup", WARMUP["W3"]))
    procs = [WorkerProc(dsn, f"w{i}", **worker_opts(p)) for i in range(k)]
    client = await Client.connect(dsn)
    try:
        for w in procs:
            w.wait_started()
        # warm-up (connections, listener, caches), not timed; the same count for every system
        for i in range(warmup):
            await (await client.start(flows.one_step, i, id=f"warm-{i}")).result(timeout=60)
        lat = []
        xid0 = next_xid(dsn)
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            h = await client.start(flows.one_step, i, id=f"w3-{i}")
            await h.result(timeout=60)
            lat.append((time.perf_counter() - t) * 1000)
        seconds = time.perf_counter() - t0
        window_xids = next_xid(dsn) - xid0
    finally:
        await client.close()
        for w in procs:
            w.stop()
    return {"steps": n, "seconds": seconds, "latencies_ms": lat, "worker_pids": [w.pid for w in procs],
            "notes": f"idle worker(s), {n} runs one at a time; start() to result() via the client "
                     f"(LISTEN cairn_closed); {warmup} untimed warm-up workflows; "
                     f"workflow_concurrency={p['workflow_concurrency']}",
            "extra": {"window_xids": window_xids}}


async def w5(dsn: str, n: int, k: int, p: dict[str, Any]) -> dict[str, Any]:
    short = int(p.get("short", 50))
    procs = [WorkerProc(dsn, f"w{i}", **worker_opts(p)) for i in range(k)]
    client = await Client.connect(dsn)
    out: dict[str, Any] = {}
    try:
        for w in procs:
            w.wait_started()
        for i in range(int(p.get("warmup", WARMUP["W5"]))):  # untimed, the same for every system
            await (await client.start(flows.sequence, 0, W5_WARMUP_STEPS, id=f"warm-{i}")).result(timeout=60)
        for label, steps in (("short", short), ("long", n)):
            t = time.perf_counter()
            h = await client.start(flows.sequence, 0, steps, id=f"w5-{label}")
            result = await h.result(timeout=3600)
            assert result == steps, result
            out[label] = (time.perf_counter() - t, str(h.run_id))
        # step cost along the history: the first and the last 10% of steps of the long run
        rows = query(dsn, "SELECT extract(epoch FROM at) FROM cairn.history WHERE run_id = %s "
                          "AND type = 'ActivityCompleted' ORDER BY seq", [out["long"][1]])
        at = [float(r[0]) for r in rows]
        tenth = max(len(at) // 10, 2)
        early = (at[tenth - 1] - at[0]) / (tenth - 1) * 1000 if len(at) > tenth else None
        late = (at[-1] - at[-tenth]) / (tenth - 1) * 1000 if len(at) > tenth else None
        length = query(dsn, "SELECT max(seq) FROM cairn.history WHERE run_id = %s", [out["long"][1]])[0][0]
    finally:
        await client.close()
        for w in procs:
            w.stop()
    long_s, short_s = out["long"][0], out["short"][0]
    return {"steps": n, "seconds": long_s, "worker_pids": [w.pid for w in procs],
            "notes": f"a run of {short} sequential activities, then one of {n}; history of the long run: "
                     f"{length} events",
            "extra": {"short_steps": short, "short_seconds": short_s, "long_ms_per_step": long_s / n * 1000,
                      "short_ms_per_step": short_s / short * 1000, "long_first_10pct_ms_per_step": early,
                      "long_last_10pct_ms_per_step": late, "history_events": length}}


# ------------------------------------------------------------------ W6 crash recovery


async def w6(dsn: str, n: int, k: int, p: dict[str, Any]) -> dict[str, Any]:
    lease = float(p.get("lease", 3.0))
    min_seq = int(p.get("min_seq", 12))
    victim = WorkerProc(dsn, "victim", **worker_opts(p, lease_seconds=lease, identity="bench-victim"))
    client = await Client.connect(dsn, max_size=p["start_concurrency"])
    rescuers: list[WorkerProc] = []
    try:
        victim.wait_started()
        run_ids = await enqueue(client, flows.forever, [(i,) for i in range(n)], p["start_concurrency"], "w6")
        # wait until every run is under way (a few steps each)
        deadline = time.monotonic() + 120
        while True:
            rows = query(dsn, "SELECT count(*) FROM (SELECT run_id FROM cairn.history WHERE run_id = ANY(%s::uuid[]) "
                              "GROUP BY run_id HAVING max(seq) >= %s) s", [run_ids, min_seq])
            if rows[0][0] >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {rows[0][0]}/{n} runs got going")
            await asyncio.sleep(0.1)
        held = query(dsn, "SELECT count(*) FROM cairn.activity_tasks WHERE lease_owner = 'bench-victim'")[0][0]
        t_kill = time.time()
        victim.kill9()
        at_kill = dict(query(dsn, "SELECT run_id::text, max(seq) FROM cairn.history WHERE run_id = ANY(%s::uuid[]) "
                                  "GROUP BY run_id", [run_ids]))
        rescuer = WorkerProc(dsn, "rescuer", **worker_opts(p, lease_seconds=lease, identity="bench-rescuer"))
        rescuers.append(rescuer)
        startup = rescuer.wait_started()
        ids = list(at_kill)
        seqs = [at_kill[r] for r in ids]
        progressed: dict[str, float] = {}
        deadline = time.monotonic() + 120 + lease * 4
        while len(progressed) < n:
            rows = query(dsn, """
                SELECT h.run_id::text, extract(epoch FROM min(h.at))
                FROM cairn.history h
                JOIN unnest(%s::uuid[], %s::int[]) AS s(run_id, seq) ON h.run_id = s.run_id AND h.seq > s.seq
                WHERE h.type = 'WorkflowTaskStarted' AND h.data ->> 'worker' = 'bench-rescuer'
                GROUP BY h.run_id""", [ids, seqs])
            for r, at in rows:
                progressed[r] = float(at)
            if len(progressed) >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(progressed)}/{n} runs progressed after the kill")
            await asyncio.sleep(0.05)
        lat = sorted((at - t_kill) * 1000 for at in progressed.values())
    finally:
        await client.close()
        if victim.proc.poll() is None:
            victim.kill9()
        victim.cleanup()
        for w in rescuers:
            w.stop()
    return {"steps": n, "seconds": max(lat) / 1000, "latencies_ms": lat,
            "worker_pids": [victim.pid, *[w.pid for w in rescuers]],
            "notes": (f"{n} runs looping over trivial activities on one worker (lease {lease:g} s, "
                      f"Worker(lease_seconds=...)); kill -9 once every run has >= {min_seq} events; a new worker "
                      f"is launched right after the kill (its start-up, {startup:.2f} s, is inside the window); "
                      f"progress = the first workflow task the new worker records for the run; lost attempts "
                      f"are retried after 50 ms (RetryPolicy.initial_interval)"),
            "extra": {"lease_s": lease, "rescuer_startup_s": startup, "activities_leased_at_kill": held}}


# ------------------------------------------------------------------ extras: MEM, CLAIM


def rss_mb(pid: int) -> dict[str, float]:
    import psutil

    pr = psutil.Process(pid)
    mi = pr.memory_full_info()
    return {"rss_mb": mi.rss / 2**20, "uss_mb": mi.uss / 2**20}


async def mem(dsn: str, n: int, k: int, p: dict[str, Any]) -> dict[str, Any]:
    """RSS of one worker holding ``n`` parked workflows, with cache_size n and n/10."""
    sizes = [int(x) for x in str(p.get("cache_sizes", f"{n},{max(n // 10, 1)}")).split(",")]
    client = await Client.connect(dsn, max_size=p["start_concurrency"])
    results = []
    pids = []
    t0 = time.perf_counter()
    try:
        for batch, cache in enumerate(sizes):
            w = WorkerProc(dsn, f"mem{cache}", **worker_opts(p, cache_size=cache))
            pids.append(w.pid)
            try:
                w.wait_started()
                await asyncio.sleep(0.5)
                idle = rss_mb(w.pid)
                await enqueue(client, flows.parked, [(i,) for i in range(n)], p["start_concurrency"], f"mem{batch}")
                deadline = time.monotonic() + 600
                while True:
                    parked = query(dsn, "SELECT count(*) FROM cairn.timers")[0][0]
                    pending = query(dsn, "SELECT count(*) FROM cairn.workflow_tasks")[0][0]
                    if parked >= n * (batch + 1) and pending == 0:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {parked} workflows parked")
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)
                loaded = rss_mb(w.pid)
                results.append({"cache_size": cache, "workflows": n, "idle_rss_mb": idle["rss_mb"],
                                "rss_mb": loaded["rss_mb"], "uss_mb": loaded["uss_mb"],
                                "cached": min(cache, n)})
                log(f"MEM: cache_size={cache}: idle {idle['rss_mb']:.1f} MB, with {n} parked runs "
                    f"{loaded['rss_mb']:.1f} MB")
            finally:
                w.stop()
    finally:
        await client.close()
    per = None
    if len(results) >= 2 and results[0]["cached"] != results[1]["cached"]:
        per = ((results[0]["rss_mb"] - results[1]["rss_mb"]) * 1024
               / (results[0]["cached"] - results[1]["cached"]))
    return {"steps": n * len(sizes), "seconds": time.perf_counter() - t0, "worker_pids": pids,
            "notes": "one worker per cache size, each given a fresh batch of n workflows parked on a 10 h timer",
            "extra": {"memory": results, "kb_per_cached_workflow": per}}


CLAIM_QUEUE = "claimbench"
BULK_SQL = """
INSERT INTO cairn.runs (run_id, namespace, workflow_id, workflow_type, queue, status, created_at, closed_at)
SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'default', 'done-' || i, 'one_step',
       'default', 'completed', now() - interval '1 day' + i * interval '1 ms',
       now() - interval '1 day' + i * interval '1 ms' + interval '20 ms'
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
"""
BULK_HISTORY_SQL = """
INSERT INTO cairn.history (run_id, seq, type, data, at)
SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, e.seq, e.type, e.data,
       now() - interval '1 day' + i * interval '1 ms' + e.seq * interval '3 ms'
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i,
     (VALUES (1, 'WorkflowStarted', '{"workflow_type": "one_step", "input": [1], "queue": "default"}'::jsonb),
             (2, 'WorkflowTaskStarted', '{"time": 0, "worker": "bulk"}'::jsonb),
             (3, 'ActivityScheduled', '{"activity_type": "inc", "input": [1], "queue": "default"}'::jsonb),
             (4, 'WorkflowTaskStarted', '{"time": 0, "worker": "bulk"}'::jsonb),
             (5, 'ActivityCompleted', '{"activity_seq": 3, "result": 2, "attempt": 1}'::jsonb),
             (6, 'WorkflowCompleted', '{"result": 2}'::jsonb)) AS e(seq, type, data)
WHERE e.seq <= %(events)s
"""


def bulk_completed(dsn: str, upto: int, events: int, start: int = 1, vacuum: bool = True) -> None:
    """Inserts completed runs number start..upto, with their history, in chunks."""
    chunk = 250_000
    for lo in range(start, upto + 1, chunk):
        hi = min(lo + chunk - 1, upto)
        query(dsn, BULK_SQL, {"lo": lo, "hi": hi})
        query(dsn, BULK_HISTORY_SQL, {"lo": lo, "hi": hi, "events": events})
    if vacuum:
        query(dsn, "VACUUM ANALYZE")


CLAIM_PARAMS = {"queues": [CLAIM_QUEUE], "now": None, "namespace": "default", "worker": "bench", "lease": 30.0,
                "limit": 50, "types": [], "low": False}
# The type a claim takes (the claims pair each queue with a type the worker runs): the
# bench's runs are one_step workflows scheduling inc activities.
CLAIM_TYPES = {"claim_workflow_task": ["one_step"], "claim_activity_tasks": ["inc"]}
CLAIMS = ("claim_workflow_task", "claim_activity_tasks")


def claim_params(sql: str, name: str = "") -> dict[str, Any]:
    """The parameters a claim statement names, as a worker passes them: up to 50 activity
    attempts per claim, and the worker's batch size (CLAIM_BATCH, if any) of workflow tasks."""
    import re

    import cairn.worker

    names = set(re.findall(r"%\((\w+)\)s", sql))
    missing = names - set(CLAIM_PARAMS)
    if missing:
        raise RuntimeError(f"the claim statement takes parameters the benchmark does not know: {sorted(missing)}")
    params = {k: CLAIM_PARAMS[k] for k in names}
    if name == "claim_workflow_task" and "limit" in params:
        params["limit"] = int(getattr(cairn.worker, "CLAIM_BATCH", 1))
    if "types" in params:
        params["types"] = CLAIM_TYPES[name]
    return params


def vacuum_queues(dsn: str) -> None:
    query(dsn, "VACUUM cairn.activity_tasks, cairn.workflow_tasks")


def _stats(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"p50_ms": statistics.median(times), "p99_ms": times[max(int(len(times) * 0.99) - 1, 0)],
            "mean_ms": statistics.fmean(times), "n": len(times)}


def _explain(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> tuple[float | None, list[str]]:
    plan = [r[0] for r in conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + sql.encode(), params).fetchall()]
    conn.rollback()
    ms = next((float(r.split(":")[1].split()[0]) for r in plan if r.startswith("Execution Time")), None)
    return ms, plan


def time_claims_pair(base_dsn: str, main_dsn: str, queue: str, iterations: int, block: int = 25) -> dict[str, Any]:
    """Times cairn's claim statements (the named queries) on two databases in alternating
    blocks, so the machine's drift hits both alike. Each execution runs in a transaction that
    rolls back, so every iteration sees the same ready rows."""
    from cairn.store.sql import q
    from cairn.worker import WORKER_CONNECTION_OPTIONS

    out: dict[str, Any] = {}
    # The worker's session settings (generic plans for prepared statements): the timed loop
    # prepares each statement after its fifth execution, as a worker's connection does.
    with psycopg.connect(base_dsn, options=WORKER_CONNECTION_OPTIONS) as cb, \
            psycopg.connect(main_dsn, options=WORKER_CONNECTION_OPTIONS) as cm:
        for name in CLAIMS:
            sql = q(name)
            params = {**claim_params(sql, name), "queues": [queue]}
            acc: dict[str, list[float]] = {"base": [], "main": []}
            got = 0
            conns = [("base", cb, base_dsn), ("main", cm, main_dsn)]
            for rnd in range(-1, max(iterations // block, 1)):
                for label, conn, dsn in conns if rnd % 2 == 0 else conns[::-1]:
                    # A rolled-back claim UPDATE leaves dead row versions behind, which
                    # autovacuum clears in production: clear them here, untimed.
                    vacuum_queues(dsn)
                    for _ in range(block if rnd >= 0 else 5):  # round -1 warms up (plans, caches)
                        t = time.perf_counter()
                        cur = conn.execute(sql, params)
                        got = len(cur.fetchall())
                        dt = (time.perf_counter() - t) * 1000
                        conn.rollback()
                        if rnd >= 0:
                            acc[label].append(dt)
            vacuum_queues(base_dsn)
            vacuum_queues(main_dsn)
            eb, plan_b = _explain(cb, sql, params)
            em, plan_m = _explain(cm, sql, params)
            base, main = _stats(acc["base"]), _stats(acc["main"])
            out[name] = {"base": base, "main": main, "ratio_p50": main["p50_ms"] / base["p50_ms"],
                         "rows_claimed": got, "explain_ms_base": eb, "explain_ms_main": em,
                         "plan_main": plan_m, "plan_base": plan_b}
    return out


def explain_backlog(base_dsn: str, main_dsn: str, backlog: int) -> dict[str, Any]:
    """EXPLAIN ANALYZE (best of 3) of the claim statements with a backlog of ready rows: that
    many running runs, each with a ready workflow task and a ready activity task, inserted
    for the measurement and deleted after it."""
    from cairn.store.sql import q

    queue = f"{CLAIM_QUEUE}{backlog}"
    out: dict[str, Any] = {}
    for label, dsn in (("base", base_dsn), ("main", main_dsn)):
        query(dsn, BACKLOG_IN, {"q": queue, "n": backlog})
        query(dsn, "ANALYZE cairn.runs, cairn.workflow_tasks, cairn.activity_tasks")
        try:
            with psycopg.connect(dsn) as c:
                for name in CLAIMS:
                    sql = q(name)
                    params = {**claim_params(sql, name), "queues": [queue]}
                    best: tuple[float | None, list[str]] = (None, [])
                    for _ in range(3):
                        ms, plan = _explain(c, sql, params)
                        if best[0] is None or (ms is not None and ms < best[0]):
                            best = (ms, plan)
                    out[f"{name}/{label}"] = best[0]
                    out[f"{name}/{label}/plan"] = best[1]
        finally:
            query(dsn, BACKLOG_OUT, {"q": queue})
            query(dsn, "VACUUM ANALYZE cairn.runs, cairn.workflow_tasks, cairn.activity_tasks")
    return out


BACKLOG_IN = """
INSERT INTO cairn.runs (run_id, namespace, workflow_id, workflow_type, queue)
SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, 'default', 'backlog-' || i, 'one_step', %(q)s
FROM generate_series(1, %(n)s) AS i;
INSERT INTO cairn.workflow_tasks (run_id, queue, workflow_type, available_at)
SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, %(q)s, 'one_step',
       now() - interval '1 s' + i * interval '1 us'
FROM generate_series(1, %(n)s) AS i;
INSERT INTO cairn.activity_tasks (run_id, seq, workflow_id, workflow_type, workflow_queue, activity_type, queue,
                                  input, options, scheduled_at, available_at)
SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, 3, 'backlog-' || i, 'one_step', %(q)s, 'inc',
       %(q)s, '[1]'::jsonb, '{"start_to_close_timeout": 60}'::jsonb, now(), now() - interval '1 s' + i * interval '1 us'
FROM generate_series(1, %(n)s) AS i
"""
BACKLOG_OUT = """
DELETE FROM cairn.activity_tasks WHERE queue = %(q)s;
DELETE FROM cairn.workflow_tasks WHERE queue = %(q)s;
DELETE FROM cairn.runs WHERE queue = %(q)s
"""


async def prepare_ready(dsn: str, readies: list[int]) -> None:
    """Ready work on queues no worker serves: per count r, r workflow tasks and r activity tasks."""
    client = await Client.connect(dsn)
    try:
        for ready in readies:
            await enqueue(client, flows.one_step, [(i,) for i in range(ready)], 8, f"ready{ready}",
                          queue=f"{CLAIM_QUEUE}{ready}")
    finally:
        await client.close()
    for ready in readies:
        query(dsn, """
            INSERT INTO cairn.activity_tasks (run_id, seq, workflow_id, workflow_type, workflow_queue,
                                              activity_type, queue, input, options, scheduled_at, available_at)
            SELECT gen_random_uuid(), 3, 'act-' || i, 'one_step', %(q)s, 'inc', %(q)s, '[1]'::jsonb,
                   '{"start_to_close_timeout": 60}'::jsonb, now(), now()
            FROM generate_series(1, %(n)s) AS i""", {"q": f"{CLAIM_QUEUE}{ready}", "n": ready})
    query(dsn, "VACUUM ANALYZE")


def sibling_dsn(dsn: str, suffix: str) -> tuple[str, str, str]:
    """A DSN for a sibling database on the same server, its name, and the maintenance DSN."""
    base, _, dbname = dsn.rpartition("/")
    dbname, _, opts = dbname.partition("?")
    name = f"{dbname}{suffix}"
    tail = f"?{opts}" if opts else ""
    return f"{base}/{name}{tail}", name, f"{base}/postgres{tail}"


async def claim(dsn: str, n: int, k: int, p: dict[str, Any]) -> dict[str, Any]:
    """Claim latency with ``n`` completed runs (and their history) against an empty database.

    A sibling database (``<db>_base``, dropped at the end) stays empty; the run's database
    grows through the levels (0 as a control, n/50, n); at each level the claim statements
    are timed on both in alternating blocks, with 1 and with 100 ready rows."""
    iterations = int(p.get("iterations", 300))
    events = int(p.get("events", 6))
    readies = [int(x) for x in str(p.get("ready", "1,100")).split(",")]
    levels = sorted({int(x) for x in str(p.get("levels", f"0,{max(n // 50, 1)},{n}")).split(",")})
    latency_runs = int(p.get("latency_runs", 100))
    backlog = int(p.get("backlog", 5000))  # EXPLAIN ANALYZE only, with this many ready rows
    t_start = time.perf_counter()
    base_dsn, base_name, admin_dsn = sibling_dsn(dsn, "_base")
    query(admin_dsn, f'DROP DATABASE IF EXISTS "{base_name}"')
    query(admin_dsn, f'CREATE DATABASE "{base_name}"')
    try:
        cairn_db.migrate(base_dsn)
        for d in (base_dsn, dsn):
            await prepare_ready(d, readies)
        points = []
        inserted = 0
        bulk_s = vacuum_s = 0.0
        for level in levels:
            t = time.perf_counter()
            bulk_completed(dsn, level, events, start=inserted + 1, vacuum=False)
            bulk_s += time.perf_counter() - t
            inserted = level
            t = time.perf_counter()
            query(dsn, "VACUUM ANALYZE")
            vacuum_s += time.perf_counter() - t
            point: dict[str, Any] = {"completed_runs": level}
            for ready in readies:
                point[f"ready_{ready}"] = time_claims_pair(base_dsn, dsn, f"{CLAIM_QUEUE}{ready}", iterations)
            if backlog:
                point["backlog_explain_ms"] = explain_backlog(base_dsn, dsn, backlog)
            points.append(point)
            if backlog:
                bx = point["backlog_explain_ms"]
                log(f"CLAIM: {level} completed runs, backlog of {backlog}: EXPLAIN ANALYZE " + ", ".join(
                    f"{name} {bx[name + '/main']} ms (empty db {bx[name + '/base']} ms)" for name in CLAIMS))
            log(f"CLAIM: {level} completed runs vs empty: " + "; ".join(
                f"ready={r}: " + ", ".join(
                    f"{name.split('_')[1]} {point[f'ready_{r}'][name]['main']['p50_ms']:.3f} vs "
                    f"{point[f'ready_{r}'][name]['base']['p50_ms']:.3f} ms" for name in CLAIMS)
                for r in readies))
        sizes = dict(query(dsn, "SELECT relname, pg_total_relation_size(oid) / 1048576 FROM pg_class "
                                "WHERE relname IN ('runs', 'history') AND relnamespace = 'cairn'::regnamespace"))
        log(f"CLAIM: inserted {n} completed runs x {events} events in {bulk_s:.1f} s (vacuum {vacuum_s:.1f} s)")
        e2e = await e2e_pair(base_dsn, dsn, latency_runs, p)
        if e2e:
            log(f"CLAIM: one_step start-to-result p50 {e2e['base']['p50_ms']:.2f} ms empty, "
                f"{e2e['main']['p50_ms']:.2f} ms with {n} completed runs")
    finally:
        query(admin_dsn, f'DROP DATABASE IF EXISTS "{base_name}" WITH (FORCE)')
    return {"steps": iterations * 4 * len(readies) * len(levels), "seconds": time.perf_counter() - t_start,
            "worker_pids": [],
            "notes": (f"{n} completed runs with {events} history events each, generated with generate_series; "
                      f"VACUUM ANALYZE at each level {levels}; claim statements timed {iterations}x each with "
                      f"{readies} ready rows, rolled back, alternating in blocks with an empty sibling database; "
                      f"e2e = one_step start-to-result on an idle worker, {latency_runs} runs, alternating"),
            "extra": {"completed_runs": n, "events_per_run": events, "bulk_insert_s": bulk_s, "vacuum_s": vacuum_s,
                      "table_mb": sizes, "levels": points, "e2e": e2e, "backlog": backlog}}


async def e2e_pair(base_dsn: str, main_dsn: str, n: int, p: dict[str, Any]) -> dict[str, Any] | None:
    """One-step start-to-result latency on two databases, alternating, one idle worker each."""
    if n <= 0:
        return None
    workers = [WorkerProc(base_dsn, "e2e-base", **worker_opts(p)), WorkerProc(main_dsn, "e2e-main", **worker_opts(p))]
    clients = [await Client.connect(base_dsn), await Client.connect(main_dsn)]
    lat: dict[str, list[float]] = {"base": [], "main": []}
    try:
        for w in workers:
            w.wait_started()
        for i in range(n + 5):
            order = [0, 1] if i % 2 == 0 else [1, 0]
            for j in order:
                t = time.perf_counter()
                h = await clients[j].start(flows.one_step, i, id=f"e2e-{time.time_ns()}-{i}")
                await h.result(timeout=60)
                if i >= 5:
                    lat["base" if j == 0 else "main"].append((time.perf_counter() - t) * 1000)
    finally:
        for c in clients:
            await c.close()
        for w in workers:
            w.stop()
    base, main = _stats(lat["base"]), _stats(lat["main"])
    return {"base": base, "main": main, "ratio_p50": main["p50_ms"] / base["p50_ms"]}


# ------------------------------------------------------------------ main

WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "MEM": mem, "CLAIM": claim}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--redis", default=None)
    ap.add_argument("--param", action="append", default=[])
    a = ap.parse_args()
    p: dict[str, Any] = dict(DEFAULTS)
    for kv in a.param:
        key, _, value = kv.partition("=")
        p[key] = int(value) if value.isdigit() else value
    t = time.perf_counter()
    cairn_db.migrate(a.dsn)
    log(f"migrated in {time.perf_counter() - t:.2f} s; {a.workload} size={a.size} workers={a.workers}")
    try:
        out = asyncio.run(WORKLOADS[a.workload](a.dsn, a.size, a.workers, p))
    except Exception as exc:
        import traceback

        traceback.print_exc()
        print(json.dumps({"system": "cairn", "workload": a.workload, "error": f"{type(exc).__name__}: {exc}"}))
        return
    out = {"system": "cairn", "workload": a.workload, **out}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
