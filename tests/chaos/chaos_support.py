"""The chaos harness: scale and seeds, a fleet of worker subprocesses and the faults done to
them, the client's acknowledgement log, recovery timing, and the JSON report.

Scale: ``CAIRN_CHAOS_SCALE=long`` (``make chaos``) switches every scenario to the issue's
sizes; the default is the short tier that runs inside ``make test``. ``CAIRN_CHAOS_SEED``
replays one seed (it fixes every random choice: victims, failing steps, injected faults;
not the timing). Each run writes ``reports/<scenario>-<time>-<seed>.json``; a failing run
appends its seed to ``failing-seeds.txt`` (kept, not ignored: commit it as a regression).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from cairn import verify as checker
from support import WorkerProc, clean_env, query, spawn_worker

HERE = Path(__file__).resolve().parent
REPORTS = HERE / "reports"
FAILING_SEEDS = HERE / "failing-seeds.txt"
LONG = os.environ.get("CAIRN_CHAOS_SCALE", "short") == "long"
SCALE = "long" if LONG else "short"
LEASE_SECONDS = 2.0
POLL_SECONDS = 0.2

# The sink the activities write to (chaos_flows): the checker's effects tables plus
# chaos.finishes, which says which process ran an attempt to its end.
FINISHES_DDL = """
CREATE TABLE chaos.finishes (run_id uuid NOT NULL, seq int NOT NULL, attempt int NOT NULL, pid int NOT NULL,
                             at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


def size(short: Any, long: Any) -> Any:
    """The short tier's value, or the issue's under CAIRN_CHAOS_SCALE=long."""
    return long if LONG else short


def seed_for(scenario: str) -> int:
    """The scenario's seed: CAIRN_CHAOS_SEED, else a fresh one. Printed, so it can be replayed."""
    env = os.environ.get("CAIRN_CHAOS_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1, 2**31)
    print(f"chaos {scenario} [{SCALE}]: seed {seed} (replay: CAIRN_CHAOS_SEED={seed})")
    return seed


def create_sink(url: str) -> None:
    """The effects sink in schema ``chaos`` (the checker's DDL) plus chaos.finishes."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS chaos")
        conn.execute(checker.EFFECTS_DDL.encode())
        conn.execute(FINISHES_DDL.encode())


# ---------------------------------------------------------------- worker subprocesses


class Fleet:
    """Worker subprocesses on one database, and the faults done to them."""

    def __init__(self, url: str, tmp: Path, *, env: dict[str, str] | None = None,
                 poll: float = POLL_SECONDS, module: str = "chaos_flows") -> None:
        self.url = url
        self.tmp = tmp
        self.env = env or {}
        self.poll = poll
        self.module = module  # the workers' -m, a module in this directory
        self.procs: list[WorkerProc] = []  # every process ever started
        self.current: dict[str, WorkerProc] = {}

    def start(self, name: str, *, wait: bool = True) -> WorkerProc:
        # PGAPPNAME: libpq names every connection of this worker (pg_stat_activity.application_name).
        env = clean_env(CHAOS_SINK_URL=self.url, PGAPPNAME=f"chaos-{name}", **self.env)
        log_path = self.tmp / f"worker-{name}-{len(self.procs)}.log"
        w = spawn_worker(name, self.url, self.module, cwd=HERE, log_path=log_path,
                         options=["--lease-seconds", str(LEASE_SECONDS), "--poll-interval", str(self.poll)], env=env)
        self.procs.append(w)
        self.current[name] = w
        if wait:
            self.wait_started(w)
        return w

    def wait_started(self, w: WorkerProc, timeout: float = 60) -> None:
        w.wait_started(timeout, interval=0.05)

    def kill9(self, w: WorkerProc) -> None:
        w.kill9()

    def restart(self, name: str) -> WorkerProc:
        return self.start(name, wait=False)

    def leased_to(self, name: str) -> list[tuple[str, int]]:
        """The activity attempts leased to this worker now (what a fault orphans)."""
        return [(str(r), s) for r, s in query(self.url, "SELECT run_id, seq FROM cairn.activity_tasks "
                                                        "WHERE lease_owner = %s", (name,))]

    def busy(self, min_age: float = 0.2) -> list[str]:
        """The workers running an activity attempt that started at least ``min_age`` s ago (a
        kill then interrupts it midway, rather than racing its completion)."""
        return sorted({str(n) for (n,) in query(self.url, """
            SELECT DISTINCT lease_owner FROM cairn.activity_tasks
            WHERE lease_owner = ANY(%s) AND started_at < now() - %s * interval '1 second'""",
                                                (sorted(self.current), min_age))})

    def logs(self) -> list[Path]:
        return [w.log_path for w in self.procs]

    def tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {w.name} pid {w.pid} rc={w.proc.poll()}:\n" +
                         "\n".join(w.log().splitlines()[-lines:]) for w in self.procs)

    def close(self) -> None:
        for w in self.procs:
            if w.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGCONT)
                w.proc.kill()
            w.proc.wait(timeout=30)


# ---------------------------------------------------------------- the client side


class AckLog:
    """What the client was told about each start, one JSON object a line (the checker's
    acknowledgement-log format)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: Counter[str] = Counter()

    def record(self, workflow_id: str, run_id: str | None, outcome: str, error: str | None = None) -> None:
        self.outcomes[outcome] += 1
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"op": "start", "workflow_id": workflow_id, "run_id": run_id,
                                "outcome": outcome, "error": error}) + "\n")

    def acknowledged(self) -> set[str]:
        out = set()
        for line in self.path.read_text().splitlines() if self.path.exists() else []:
            rec = json.loads(line)
            if rec["outcome"] == "ok":
                out.add(rec["workflow_id"])
        return out


async def start_acked(client: Any, acks: AckLog, workflow_id: str, workflow: Any, arg: Any,
                      *, give_up_after: float = 120.0, attempt_timeout: float = 5.0) -> str:
    """Starts a run and records what the client was told. A failure is ambiguous (it may
    have committed): the start is retried with the same id until the client knows."""
    from cairn.errors import WorkflowAlreadyStarted

    deadline = time.monotonic() + give_up_after
    retried = False
    while True:
        try:
            handle = await asyncio.wait_for(client.start(workflow, arg, id=workflow_id,
                                                         id_reuse_policy="reject_duplicate"), attempt_timeout)
            acks.record(workflow_id, str(handle.run_id), "ok")
            return str(handle.run_id)
        except WorkflowAlreadyStarted as exc:
            if not retried:
                raise  # a fresh id never exists: this is a real bug, not a fault
            acks.record(workflow_id, exc.run_id, "ok")  # the earlier, ambiguous attempt had committed
            return exc.run_id
        except (Exception, TimeoutError) as exc:
            acks.record(workflow_id, None, "ambiguous", f"{type(exc).__name__}: {exc}")
            if time.monotonic() > deadline:
                raise
            retried = True
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------- recovery timing


@dataclass
class Fault:
    kind: str
    at: float
    orphans: list[tuple[str, int]] = field(default_factory=list)
    baseline: int = -1  # history rows when the fault ended (progress-based recovery)
    recovered_at: float | None = None
    moot: bool = False  # orphaned nothing and the work was all done: nothing to recover

    @property
    def recovery(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.at


class Monitor:
    """Times recovery in a thread. A fault that orphaned activity attempts has recovered when
    every one of them has its outcome in history; any other fault when history grows again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)
        self._thread.start()

    def fault(self, kind: str, orphans: list[tuple[str, int]] | None = None, *, progress: bool = True) -> Fault:
        """Records a fault now; ``progress=False`` records it without timing its recovery."""
        f = Fault(kind, time.monotonic(), orphans or [])
        if not progress:
            f.recovered_at = f.at
        with self._lock:
            self.faults.append(f)
        return f

    def _history_rows(self) -> int:
        return int(query(self.url, "SELECT count(*) FROM cairn.history")[0][0])

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                open_faults = [f for f in self.faults if f.recovered_at is None]
            if not open_faults:
                continue
            try:
                rows = self._history_rows()
                for f in open_faults:
                    if f.orphans:
                        done = query(self.url, """
                            SELECT count(*) FROM cairn.history h
                            JOIN unnest(%s::uuid[], %s::int[]) AS o(run_id, seq)
                              ON h.run_id = o.run_id AND (h.data->>'activity_seq')::int = o.seq
                            WHERE h.type IN ('ActivityCompleted', 'ActivityFailed', 'ActivityCancelled')""",
                                     ([r for r, _ in f.orphans], [s for _, s in f.orphans]))[0][0]
                        if done >= len(f.orphans):
                            f.recovered_at = time.monotonic()
                    elif f.baseline < 0:
                        f.baseline = rows
                    elif rows > f.baseline:
                        f.recovered_at = time.monotonic()
            except psycopg.Error:
                continue  # the server is down (a crash scenario): try again
            except Exception as exc:  # a bug here must not silently stop the timing
                print(f"chaos monitor: {exc!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        # A fault that orphaned nothing is timed by history growing again; if every run had
        # already closed, history never grows again and there was nothing to recover.
        idle = [f for f in self.faults if f.recovered_at is None and not f.orphans and not f.moot]
        try:
            done = bool(idle) and query(self.url, "SELECT count(*) FROM cairn.runs WHERE status = 'running'")[0][0] == 0
        except psycopg.Error:  # closed from a finally block with the server down
            done = False
        for f in idle if done else []:
            f.moot = True

    def summary(self) -> dict[str, Any]:
        # Faults recorded with progress=False have no recovery of their own to time.
        times = sorted(f.recovery for f in self.faults
                       if f.recovery is not None and (f.orphans or f.baseline >= 0))
        return {
            "faults_by_type": dict(Counter(f.kind for f in self.faults)),
            "recovery_p50_s": round(statistics.median(times), 3) if times else None,
            "recovery_max_s": round(max(times), 3) if times else None,
            "recoveries_timed": len(times),
            "unrecovered": sum(f.recovered_at is None and not f.moot for f in self.faults),
        }


# ---------------------------------------------------------------- the verdict


def check_and_report(scenario: str, seed: int, url: str, acks: AckLog, fleet: Fleet, monitor: Monitor,
                     t0: float, *, settle: float, expect_reexecution: bool,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Waits (up to ``settle`` s) for every run to close, runs the invariant checker, writes
    the JSON report, and returns it. The caller asserts ``report["violations"] == []``."""
    import chaos_flows

    # The bound: every run closes within ``settle`` s of the faults stopping (the monitor
    # keeps timing recoveries meanwhile); the checker reports any run still open.
    deadline = time.monotonic() + settle
    while query(url, "SELECT 1 FROM cairn.runs WHERE status = 'running' LIMIT 1") and time.monotonic() < deadline:
        time.sleep(0.2)
    settled_s = round(time.monotonic() - (deadline - settle), 2)
    monitor.close()
    result = asyncio.run(checker.verify(
        url, acks=acks.path, workflows=chaos_flows.WORKFLOWS, effects_table="chaos.effects",
        log_files=fleet.logs(), settle_timeout=5.0, expect_reexecution=expect_reexecution))
    acked = acks.acknowledged()
    runs = dict(query(url, "SELECT workflow_id, count(*) FROM cairn.runs GROUP BY workflow_id"))
    report: dict[str, Any] = {
        "scenario": scenario, "scale": SCALE, "seed": seed,
        "replay": f"CAIRN_CHAOS_SEED={seed} CAIRN_CHAOS_SCALE={SCALE} pytest -m chaos -k {scenario}",
        "wall_s": round(time.monotonic() - t0, 1),
        "settled_after_faults_s": settled_s,
        "acknowledged": len(acked),
        "ambiguous_start_attempts": acks.outcomes.get("ambiguous", 0),
        "lost": sorted(w for w in acked if w not in runs),
        "duplicated": sorted(w for w, n in runs.items() if n > 1),
        "stuck": [w for (w,) in query(url, "SELECT workflow_id FROM cairn.runs WHERE status = 'running'")],
        "statuses": dict(query(url, "SELECT status, count(*) FROM cairn.runs GROUP BY status")),
        "re_executions": int(query(url, "SELECT count(*) FROM chaos.attempts WHERE attempt > 1")[0][0]),
        "attempts": int(query(url, "SELECT count(*) FROM chaos.attempts")[0][0]),
        "effects": int(query(url, "SELECT count(*) FROM chaos.effects")[0][0]),
        "worker_processes": len(fleet.procs),
        **monitor.summary(),
        **(extra or {}),
        "checker": result.to_json(),
        "violations": [f"{v.invariant}: {v.workflow_id or v.run_id}: {v.detail}" for v in result.violations],
    }
    REPORTS.mkdir(exist_ok=True)
    path = REPORTS / f"{scenario}-{time.strftime('%Y%m%dT%H%M%S')}-{seed}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"chaos {scenario}: report {path}")
    print(json.dumps({k: v for k, v in report.items() if k not in ("checker", "lost", "duplicated", "stuck")},
                     default=str))
    return report


@contextlib.contextmanager
def keeping_seed(scenario: str, seed: int) -> Iterator[None]:
    """A failure appends the seed to failing-seeds.txt, then propagates."""
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            with open(FAILING_SEEDS, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {scenario} scale={SCALE} seed={seed} "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n")
        raise
