"""The Cairn benchmark harness: ``make bench`` (full) or ``make bench BENCH_ARGS="--quick"``.

Starts a private Postgres (bench/pgcluster.py), measures the pgbench ceiling, runs every
system's runner (protocol in bench/README.md) on every workload with a fresh database per
run, and prints one table and the ratios; writes bench/results/<timestamp>.json (and, for
complete full runs or with --latest, bench/latest.json and the table in bench/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import pgcluster  # noqa: E402
import procs  # noqa: E402
import storm_metrics  # noqa: E402


@dataclass
class System:
    name: str
    runner: str            # relative to the repository root
    venv: str              # relative to the repository root
    requirements: str | None = None
    needs_redis: bool = False
    label: str = ""
    llm_runner: str = ""    # the LLM storm workload's runner (relative to the repository root)
    params: tuple[str, ...] = ()     # --param KEY=VALUE for every run of this system (a variant's settings)
    workloads: tuple[str, ...] = ()  # the workloads it runs (empty: all)
    redis_aof: str = "no"            # Celery: its private Redis's appendfsync, or "no" (no persistence)


CELERY = ("bench/peers/celery_runner.py", "bench/.venv-celery", "bench/peers/requirements-celery.txt")
DBOS = ("bench/peers/dbos_runner.py", "bench/.venv-dbos", "bench/peers/requirements-dbos.txt")
PROCRASTINATE = ("bench/peers/procrastinate_runner.py", "bench/.venv-procrastinate",
                 "bench/peers/requirements-procrastinate.txt")
W1_TO_W6 = ("W1", "W2", "W3", "W4", "W5", "W6")
SYSTEMS = [
    System("cairn", "bench/cairn_runner.py", ".venv", None, label="cairn (push: LISTEN/NOTIFY, no poll interval)",
           llm_runner="bench/llm_storm_cairn.py"),
    System("dbos", *DBOS, label="DBOS Transact, bench settings: queue poll 10 ms, result poll 5 ms "
           "(library defaults 1 s and 1 s)", llm_runner="bench/peers/dbos_llm.py"),
    System("dbos-best", *DBOS, label="DBOS Transact at best: queue poll 1 ms, result poll 1 ms",
           params=("dbos_poll_s=0.001", "result_poll_s=0.001"), workloads=("W3",)),
    System("procrastinate", *PROCRASTINATE, label="Procrastinate, bench settings: LISTEN/NOTIFY, fetch poll "
           "10 ms, status poll 5 ms (it has no result API)", llm_runner="bench/peers/procrastinate_llm.py"),
    System("procrastinate-best", *PROCRASTINATE, label="Procrastinate at best: status poll 1 ms (the worker "
           "is woken by NOTIFY; fetch poll 10 ms)", params=("result_poll_s=0.001",), workloads=("W3",)),
    System("celery", *CELERY, needs_redis=True, label="Celery + Redis, NO persistence (appendonly no, no "
           "snapshots): a Redis restart loses every queued task and result", llm_runner="bench/peers/celery_llm.py"),
    System("celery-aof-everysec", *CELERY, needs_redis=True, label="Celery + Redis, AOF appendfsync everysec "
           "(a crash loses about the last second)", workloads=W1_TO_W6, redis_aof="everysec"),
    System("celery-aof-always", *CELERY, needs_redis=True, label="Celery + Redis, AOF appendfsync always "
           "(an fsync per write, like fsync=on)", workloads=W1_TO_W6, redis_aof="always"),
]

# workload -> (size, worker counts); see bench/README.md
FULL = {"W1": (5000, [1, 2]), "W2": (1000, [1, 2]), "W3": (300, [1]), "W4": (200, [1]), "W5": (5000, [1]),
        "W6": (100, [1]), "LLM": (1000, [3])}
QUICK = {"W1": (300, [1, 2]), "W2": (50, [1, 2]), "W3": (30, [1]), "W4": (15, [1]), "W5": (300, [1]),
         "W6": (20, [1]), "LLM": (100, [3])}
# The LLM storm workload (bench/README.md, "Workload LLM"): the storm provider's settings.
LLM_CALLS = 3              # sequential chat calls per workflow
LLM_RPM = {"full": 1800, "quick": 600}  # the provider's published (and enforced) limit
LLM_DEADLINE_FACTOR = 3.0  # the deadline: this many times the ideal makespan...
LLM_DEADLINE_MIN_S = 60.0  # ...but at least this long
LLM_PROVIDER = {"window": 60.0, "fail_rate": 0.3, "burst_every": 15.0, "burst_seconds": 2.0, "seed": 14,
                "latency_min_ms": 20.0, "latency_max_ms": 50.0}
EXTRAS_FULL = {"MEM": 10_000, "CLAIM": 1_000_000}
EXTRAS_QUICK = {"MEM": 500, "CLAIM": 20_000}
EXTRAS_QUICK_PARAMS = ["iterations=100", "latency_runs=20"]

STEP_UNIT = {"W1": "workflows/s", "W2": "steps/s", "W3": "workflows/s", "W4": "steps/s", "W5": "steps/s",
             "W6": "s to recover", "LLM": "s makespan"}
DESCRIPTION = {
    "W1": "backlog of N workflows x 1 trivial activity, drained by K worker processes",
    "W2": "N workflows x 10 sequential trivial activities",
    "W3": "N workflows x 1 activity, one at a time on an idle worker: start-to-result",
    "W4": "N workflows each gathering 20 parallel activities",
    "W5": "one workflow of N sequential steps, and one of 50: time per step",
    "W6": "kill -9 of a worker holding N running workflows: time until all progress on a new worker",
    "LLM": "N workflows x 3 sequential chat calls against the storm provider (500s, 429 bursts, its own RPM)",
}
REDIS_URL = "redis://127.0.0.1:6379/9"  # the machine's Redis: used only when redis-server cannot be started
# Untimed warm-up, the same for every system (passed to every runner as --param warmup=N):
# W3 runs this many one-activity workflows before the timed ones, W5 this many 3-step
# workflows; W1, W2, W4 and W6 have none (every system's worker start-up is inside the window).
WARMUP = {"W3": 5, "W5": 1}
WARMUP_NOTE = (f"warm-up, the same for every system: W3 {WARMUP['W3']} untimed one-activity workflows, W5 "
               f"{WARMUP['W5']} untimed 3-step workflow(s); none on W1, W2, W4, W6 (worker start-up inside the window)")


def say(msg: str = "") -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ environment


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(), "kernel": platform.release(), "platform": platform.platform(),
        "python": sys.version.split()[0], "cores_logical": os.cpu_count(),
    }
    try:
        import psutil

        info["cores_physical"] = psutil.cpu_count(logical=False)
        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    info["load_average_at_start"] = os.getloadavg()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True,
                               check=False).stdout.strip()
        info["git_commit"] = commit
        info["src_dirty"] = bool(dirty)
    except OSError:
        pass
    return info


def redis_available(url: str) -> str | None:
    """The Redis version if something answers PING on the URL's host and port."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(64).startswith(b"+PONG"):
                return None
            s.sendall(b"INFO server\r\n")
            time.sleep(0.05)
            data = s.recv(65536).decode(errors="replace")
            for line in data.splitlines():
                if line.startswith("redis_version:"):
                    return line.split(":", 1)[1].strip()
            return "unknown"
    except OSError:
        return None


class PrivateRedis:
    """A redis-server of the run's own (never the machine's shared one) on a free port, its
    files in a temporary directory on the same disk as the private Postgres's data. ``aof``:
    "no" (no persistence: no AOF, no snapshots) or an ``appendfsync`` policy for an AOF."""

    def __init__(self, aof: str) -> None:
        self.aof = aof
        self.port = pgcluster.free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"cairn-bench-redis-{aof}-"))
        persistence = ["--appendonly", "no"] if aof == "no" else ["--appendonly", "yes", "--appendfsync", aof]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(self.dir))
        self.url = f"redis://127.0.0.1:{self.port}/9"
        deadline = time.monotonic() + 30
        while not redis_available(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server ({aof}) did not start")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        try:
            import psutil

            t = psutil.Process(self.proc.pid).cpu_times()
            return float(t.user + t.system + t.children_user + t.children_system)
        except Exception:
            return 0.0

    def stop(self) -> None:
        procs.terminate(self.proc, 30)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_params(sysm: System, workload: str) -> list[str]:
    """The --param list of a run: the warm-up (the same for every system), then the system's
    own settings (a variant's); the command line's --param come after and override."""
    return ([f"warmup={WARMUP[workload]}"] if workload in WARMUP else []) + list(sysm.params)


def start_redis(sysm: System, servers: dict[str, PrivateRedis], shared: str | None) -> tuple[str | None, str]:
    """The Redis URL for a Celery system: its own private server (one per persistence mode,
    shared by the runs of that mode); without redis-server, the machine's for the
    non-persistent rows only."""
    if sysm.redis_aof not in servers:
        try:
            servers[sysm.redis_aof] = PrivateRedis(sysm.redis_aof)
        except (OSError, RuntimeError) as exc:
            if sysm.redis_aof == "no" and shared:
                return REDIS_URL, f"no private redis-server ({exc}); the machine's Redis {shared}"
            return None, f"no redis-server with appendfsync {sysm.redis_aof}: {exc}"
    return servers[sysm.redis_aof].url, ""


def venv_python(system: System, log_dir: Path) -> tuple[str | None, str]:
    """The system's venv python, creating the venv from its requirements when missing."""
    venv = ROOT / system.venv
    py = venv / "bin" / "python"
    if system.requirements is None:
        return (str(py), "") if py.exists() else (sys.executable, "project interpreter")
    req = ROOT / system.requirements
    if not req.exists():
        return None, f"{system.requirements} not found"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = venv / ".bench-installed"
    if py.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return str(py), ""
    say(f"  creating {system.venv} from {system.requirements} ...")
    logf = log_dir / f"venv-{system.name}.log"
    with open(logf, "w") as out:
        try:
            if not py.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out,
                               timeout=300)
            subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=False,
                           stdout=out, stderr=out, timeout=600)
            subprocess.run([str(py), "-m", "pip", "install", "--quiet", "-r", str(req)], check=True,
                           stdout=out, stderr=out, timeout=1200, cwd=str(ROOT))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            return None, f"could not install {system.requirements}: {exc} (log: {logf})"
    stamp.write_text(digest)
    return str(py), ""


def package_versions(py: str) -> dict[str, str]:
    try:
        out = subprocess.run([py, "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
        keep = {"cairn", "dbos", "procrastinate", "celery", "redis", "kombu", "psycopg", "psycopg-binary",
                "psycopg2-binary", "sqlalchemy", "uvloop", "psycopg-pool"}
        return {p["name"]: p["version"] for p in json.loads(out) if p["name"].lower() in keep}
    except Exception:
        return {}


# ------------------------------------------------------------------ measured subprocess


def run_measured(cluster: pgcluster.Cluster, dbname: str, cmd: list[str], log_path: Path,
                 timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``cmd`` and returns its stdout, exit code, wall time, CPU of it and all its
    reaped descendants (wait4), and the Postgres counters' deltas around it."""
    before = cluster.stats(dbname)
    out_path = log_path.with_suffix(".out")
    with open(out_path, "w") as out, open(log_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=str(ROOT), start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        timed_out = False
        try:
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline and not timed_out:
                    timed_out = True
                    with _suppress():
                        os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.05)
        except BaseException:  # interrupted: take the runner and everything it started down too
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    leftovers = False
    with _suppress():
        os.killpg(proc.pid, signal.SIGKILL)  # anything the runner left behind
        leftovers = True
    _wait_no_backends(cluster, dbname)
    after = cluster.stats(dbname)
    delta = {k: after[k] - before[k] for k in before}
    return {"stdout": out_path.read_text(), "rc": proc.returncode, "wall": wall, "timed_out": timed_out,
            "cpu_user": ru.ru_utime, "cpu_sys": ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
            "leftover_processes": leftovers, "pg": delta}


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, *exc: Any) -> bool:
        return tp is not None and issubclass(tp, (ProcessLookupError, PermissionError))


def _wait_no_backends(cluster: pgcluster.Cluster, dbname: str, timeout: float = 10) -> None:
    """Waits until the database has no sessions, so exiting backends have flushed their stats."""
    deadline = time.monotonic() + timeout
    with cluster.connect() as c:
        while time.monotonic() < deadline:
            row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [dbname]).fetchone()
            if row and row[0] == 0:
                break
            time.sleep(0.1)
    time.sleep(0.05)


def parse_output(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except json.JSONDecodeError:
                continue
    return None


# ------------------------------------------------------------------ figures


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def per_run_figures(workload: str, out: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    steps = max(int(out.get("steps") or 0), 1)
    seconds = float(out.get("seconds") or 0)
    lat = [float(x) for x in out.get("latencies_ms") or []]
    pg = m["pg"]
    fig: dict[str, Any] = {
        "steps": steps, "seconds": seconds,
        "rate": steps / seconds if seconds > 0 else None,
        "headline": seconds if workload == "W6" else (steps / seconds if seconds > 0 else None),
        "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else None,
        "commits_per_step": pg["xact_commit"] / steps,
        "writes_per_step": pg["xids"] / steps,
        "read_only_commits_per_step": max(pg["xact_commit"] - pg["xids"], 0.0) / steps,
        "wal_syncs_per_step": pg["wal_sync"] / steps,
        "wal_bytes_per_step": pg["wal_bytes"] / steps,
        "client_cpu_ms_per_step": (m["cpu_user"] + m["cpu_sys"]) * 1000 / steps,
        "server_cpu_ms_per_step": pg["server_cpu"] * 1000 / steps,
        "client_cpu_s": m["cpu_user"] + m["cpu_sys"], "server_cpu_s": pg["server_cpu"],
        "commits": pg["xact_commit"], "wal_syncs": pg["wal_sync"], "wal_bytes": pg["wal_bytes"],
        "wall_s": m["wall"], "client_maxrss_mb": m["maxrss_mb"],
    }
    extra = out.get("extra") or {}
    if extra.get("window_xids") is not None:  # W3: the timed window's writing transactions, exact
        fig["window_writes_per_step"] = float(extra["window_xids"]) / steps
    if extra.get("enqueue_and_drain_s"):
        fig["rate_incl_enqueue"] = steps / float(extra["enqueue_and_drain_s"])
    if m.get("redis_cpu_s") is not None:
        fig["redis_cpu_ms_per_step"] = m["redis_cpu_s"] * 1000 / steps
    if workload == "W5" and extra.get("short_seconds"):
        fig["short_ms_per_step"] = float(extra["short_seconds"]) * 1000 / int(extra.get("short_steps", 50))
        fig["long_ms_per_step"] = seconds * 1000 / steps
    return fig


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["figures"] for r in runs if r.get("figures")]
    if not ok:
        return {}
    s: dict[str, Any] = {"runs": len(ok)}
    keys = [k for k in ok[0] if isinstance(ok[0][k], (int, float))]
    for k in keys:
        vals = [f[k] for f in ok if isinstance(f.get(k), (int, float))]
        if vals:
            s[k] = statistics.median(vals)
            s[k + "_min"] = min(vals)
            s[k + "_max"] = max(vals)
    return s


# ------------------------------------------------------------------ table


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.{digits}f}"
        return f"{v:.{digits + 1}f}"
    return str(v)


def workload_keys(plan: dict[str, tuple[int, list[int]]]) -> list[str]:
    keys = []
    for w, (_, ks) in plan.items():
        for k in ks:
            keys.append(f"{w} K={k}" if len(ks) > 1 else w)
    return keys


HEADER = ["workload", "system", "median", "min–max", "unit", "incl. enqueue", "p50 ms", "p99 ms", "commits/step",
          "writing/step", "read-only/step", "WAL syncs/step", "WAL B/step", "client CPU ms/step", "PG CPU ms/step",
          "runs"]


def table_rows(results: dict[str, dict[str, Any]], keys: list[str], systems: list[System],
               skipped: dict[str, str]) -> list[list[str]]:
    rows = []
    for key in keys:
        w = key.split()[0]
        if w == "LLM":  # its own table (llm_rows)
            continue
        for sysm in systems:
            if sysm.workloads and w not in sysm.workloads:
                continue
            entry = results.get(sysm.name, {}).get(key)
            blank = [""] * (len(HEADER) - 6)
            if not entry or not entry.get("summary"):
                note = (entry or {}).get("error") or skipped.get(sysm.name) or "not run"
                note = " ".join(note.split())
                rows.append([key, sysm.name, "skipped", "", STEP_UNIT[w], *blank, f"0 ({note[:70]})"])
                continue
            s = entry["summary"]
            head, lo, hi = s.get("headline"), s.get("headline_min"), s.get("headline_max")
            rows.append([key, sysm.name, fmt(head), f"{fmt(lo)}–{fmt(hi)}", STEP_UNIT[w],
                         fmt(s.get("rate_incl_enqueue")) if s.get("rate_incl_enqueue") else "",
                         fmt(s.get("p50_ms")), fmt(s.get("p99_ms")), fmt(s.get("commits_per_step"), 2),
                         fmt(s.get("writes_per_step"), 2), fmt(s.get("read_only_commits_per_step"), 2),
                         fmt(s.get("wal_syncs_per_step"), 2), fmt(s.get("wal_bytes_per_step")),
                         fmt(s.get("client_cpu_ms_per_step"), 2), fmt(s.get("server_cpu_ms_per_step"), 2),
                         str(s["runs"])])
            if w == "W5" and s.get("short_ms_per_step") is not None:
                rows.append([f"{key} ms/step", sysm.name,
                             f"{fmt(s.get('long_ms_per_step'), 2)} (N) / {fmt(s.get('short_ms_per_step'), 2)} (50)",
                             "", "ms/step long / short", *blank, str(s["runs"])])
    return rows


def commit_cost_lines(results: dict[str, dict[str, Any]], systems: list[System]) -> list[str]:
    """W3's commit cost per workflow, one line per system: its writing transactions in the
    timed window (exact), and its read-only commits (polls) over the whole run."""
    lines = []
    for sysm in systems:
        s = (results.get(sysm.name, {}).get("W3") or {}).get("summary")
        if not s:
            continue
        window = s.get("window_writes_per_step")
        lines.append(
            f"W3 commit cost, {sysm.name}: "
            + (f"{window:.2f} writing transactions per workflow in the timed window (exact: xid delta); "
               if window is not None else "no Postgres writes in the window; ")
            + f"whole run per workflow (setup and warm-up included): {s['commits_per_step']:.2f} commits = "
            f"{s['writes_per_step']:.2f} writing + {s['read_only_commits_per_step']:.2f} read-only (polls), "
            f"{s['wal_syncs_per_step']:.2f} WAL syncs")
    return lines


LLM_HEADER = ["system", "completed by deadline", "requests sent", "paid twice", "attempts burnt by 429",
              "above provider RPM", "sent during bursts", "makespan s", "÷ ideal", "÷ floor", "÷ bound",
              "half-open max/permitted",
              "runs"]


def llm_rows(results: dict[str, dict[str, Any]], systems: list[System], skipped: dict[str, str]
             ) -> list[list[str]]:
    """The LLM storm workload's table: one row per system (medians over runs)."""
    rows = []
    for sysm in systems:
        entry = results.get(sysm.name, {}).get("LLM")
        if entry is None:
            continue
        s = entry.get("summary") or {}
        if not s:
            note = " ".join(str(entry.get("error") or skipped.get(sysm.name) or "not run").split())
            rows.append([sysm.name, "skipped", "", "", "", "", "", "", "", "", "", "", f"0 ({note[:70]})"])
            continue

        def n(k: str, s: dict[str, Any] = s) -> str:
            v = s.get(k)
            return "–" if v is None else f"{v:,.0f}"

        done = (f"{s.get('llm_completed_pct', 0):.1f} % ({n('llm_completed_by_deadline')}/{n('llm_workflows')} "
                f"in {n('llm_deadline_s')} s)")
        make = s.get("llm_makespan_s")
        half = "–"
        if s.get("llm_permitted_in_half_open"):
            half = (f"{n('llm_half_open_max_requests')}/{n('llm_permitted_in_half_open')} "
                    f"({n('llm_half_open_overrun_periods')} of {n('llm_half_open_periods')} periods over)")
        burnt = n("llm_attempts_burnt_429")
        if s.get("llm_attempts_lost_other"):
            burnt += f" (+{n('llm_attempts_lost_other')} lost otherwise)"
        rows.append([sysm.name, done, n("llm_requests"), n("llm_paid_twice"), burnt,
                     n("llm_above_rpm"), n("llm_during_burst"),
                     "not all done" if make is None else f"{make:.1f}",
                     "–" if s.get("llm_makespan_vs_ideal") is None else f"{s['llm_makespan_vs_ideal']:.2f}x",
                     "–" if s.get("llm_makespan_vs_floor") is None else f"{s['llm_makespan_vs_floor']:.2f}x",
                     "–" if s.get("llm_makespan_vs_bound") is None else f"{s['llm_makespan_vs_bound']:.2f}x",
                     half, str(s["runs"])])
    return rows


def llm_legend(results: dict[str, dict[str, Any]]) -> list[str]:
    """How the LLM table's figures are defined, with this run's numbers."""
    for per in results.values():
        entry = per.get("LLM") or {}
        for run in entry.get("runs", []):
            f, prov = run.get("figures"), run.get("provider")
            if not f or not prov:
                continue
            return [
                f"LLM: {f['llm_workflows']:,} workflows x {LLM_CALLS} sequential chat calls = "
                f"{f['llm_calls']:,} calls; "
                f"storm provider rpm {prov['rpm']} (sliding {prov['window']:g} s window; 200s and 500s count toward "
                f"it, 429s do not), {prov['fail_rate']:.0%} of admitted requests answered 500, 429 bursts of "
                f"{prov['burst_seconds']:g} s every {prov['burst_every']:g} s, seed {prov['seed']}.",
                f"LLM: ideal = calls ÷ provider limit = {f['llm_calls']:,} ÷ {prov['rpm']}/min = "
                f"{f['llm_ideal_s']:.0f} s; "
                f"floor = calls ÷ (1 - fail rate) ÷ limit = {f['llm_floor_s']:.0f} s (the 500s count toward the "
                "RPM: the floor of a client that sends at an even rate; one that spends a whole empty window at "
                "once can beat it against this provider's pure sliding window, not against providers that "
                "enforce a minute's limit over shorter periods).",
                f"LLM: bound = the makespan of an idealised client (bench/storm_bound.py: no overhead, the exact "
                f"window, no request during a burst, ready calls in order, retry backoff 0.5 s x2 capped at 8 s as "
                f"cairn's chat default and the peers') = {f.get('llm_bound_s') or 0:.0f} s, the median of 10 "
                "simulated runs: the last window's runs of 500s set its tail.",
                "LLM: attempts burnt by 429: cairn from history (each completed call's attempt - 1 - the 500s it got, "
                "up to the 429s it got; the rest: 'lost otherwise'); peers: every 429 they received (one request per "
                "attempt, each one counted by their retry machinery).",
            ]
    return []


def render_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    line = "  ".join(h.ljust(widths[i]) for i, h in enumerate(header))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)))
    return "\n".join(out)


def render_md(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(out)


def ratios(results: dict[str, dict[str, Any]], keys: list[str], systems: list[System],
           ceiling: list[dict[str, Any]]) -> tuple[list[list[str]], list[dict[str, Any]]]:
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    cairn = results.get("cairn", {})
    for sysm in systems:
        if sysm.name == "cairn":
            continue
        peer = results.get(sysm.name, {})
        for key in keys:
            w = key.split()[0]
            if w == "LLM" or (sysm.workloads and w not in sysm.workloads):
                continue
            c, p = (cairn.get(key) or {}).get("summary"), (peer.get(key) or {}).get("summary")
            metrics = [("headline", STEP_UNIT[w], w != "W6")]
            if w in ("W1", "W2", "W4"):
                metrics.append(("rate_incl_enqueue", f"{STEP_UNIT[w]} incl. enqueue", True))
            if w == "W3":
                metrics = [("rate", "workflows/s", True), ("p50_ms", "p50 latency", False),
                           ("p99_ms", "p99 latency", False)]
            if w == "W5":
                metrics = [("long_ms_per_step", f"ms/step ({FULL_OR(key)} steps)", False),
                           ("short_ms_per_step", "ms/step (50 steps)", False)]
            for metric, label, higher_better in metrics:
                cv = c.get(metric) if c else None
                pv = p.get(metric) if p else None
                r = cv / pv if cv and pv else None
                better = None if r is None else (r > 1 if higher_better else r < 1)
                rows.append([f"cairn ÷ {sysm.name}", key, label, fmt(cv), fmt(pv),
                             "–" if r is None else f"{r:.2f}x",
                             "higher is better" if higher_better else "lower is better",
                             "" if better is None else ("cairn ahead" if better else "peer ahead")])
                data.append({"peer": sysm.name, "workload": key, "metric": metric, "cairn": cv, "peer_value": pv,
                             "ratio": r, "higher_is_better": higher_better})
    tps = {c["clients"]: c.get("tps") for c in ceiling if c.get("tps")}
    if tps:
        best = max(tps.values())
        for key in keys:
            w = key.split()[0]
            if w in ("W3", "W6", "LLM"):
                continue
            s = (cairn.get(key) or {}).get("summary")
            rate = s.get("rate") if s else None
            one = tps.get(1)
            r1 = rate / one if rate and one else None
            rb = rate / best if rate else None
            rows.append(["cairn ÷ pgbench", key, "steps/s ÷ insert tps", fmt(rate),
                         f"{fmt(one)} (1c) / {fmt(best)} (best)",
                         f"{r1:.3f} / {rb:.3f}" if r1 and rb else "–", "1 client / best", ""])
            data.append({"peer": "pgbench", "workload": key, "metric": "rate", "cairn": rate,
                         "ceiling_1_client": one, "ceiling_best": best, "ratio_1_client": r1, "ratio_best": rb})
    return rows, data


_SIZES: dict[str, int] = {}


def FULL_OR(key: str) -> str:
    return str(_SIZES.get(key.split()[0], "N"))


# ------------------------------------------------------------------ main


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    # SIGINT/SIGTERM stop the run cleanly (runner killed, Postgres stopped), even when
    # started in the background (where SIGINT arrives ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 run each (~8 minutes, LLM most of it)")
    ap.add_argument("--runs", type=int, default=None, help="runs per system and workload (default 3; quick 1)")
    ap.add_argument("--systems", default=None, help="comma-separated subset of: " + ",".join(s.name for s in SYSTEMS))
    ap.add_argument("--workloads", default=None, help="comma-separated subset of W1..W6, LLM")
    ap.add_argument("--size", action="append", default=[], metavar="W=N", help="override a workload's size")
    ap.add_argument("--extras", default=None, help="cairn extras to run: MEM,CLAIM (default both; 'none' to skip)")
    ap.add_argument("--extra-size", action="append", default=[], metavar="X=N", help="override MEM/CLAIM size")
    ap.add_argument("--param", action="append", default=[], metavar="SYSTEM:KEY=VALUE",
                    help="extra --param for one system's runner")
    ap.add_argument("--ceiling-seconds", type=int, default=None, help="pgbench duration per client count")
    ap.add_argument("--timeout", type=float, default=600, help="per runner invocation, seconds")
    ap.add_argument("--llm-rpm", type=int, default=None, help="LLM: the storm provider's RPM (full 1800, quick 600)")
    ap.add_argument("--llm-deadline", type=float, default=None,
                    help=f"LLM: seconds (default {LLM_DEADLINE_FACTOR:g} x the ideal, at least {LLM_DEADLINE_MIN_S:g})")
    ap.add_argument("--llm-runs", type=int, default=1, help="LLM: runs per system (default 1: ~5 min each)")
    ap.add_argument("--no-latest", action="store_true", help="do not update bench/latest.json and bench/README.md")
    ap.add_argument("--latest", action="store_true", help="update bench/latest.json and README even for a quick or partial run")
    a = ap.parse_args()

    quick = a.quick
    plan = {w: (n, list(ks)) for w, (n, ks) in (QUICK if quick else FULL).items()}
    if a.workloads:
        wanted = [w.strip().upper() for w in a.workloads.split(",")]
        plan = {w: plan[w] for w in wanted if w in plan}
    for kv in a.size:
        w, _, n = kv.partition("=")
        if w.upper() in plan:
            plan[w.upper()] = (int(n), plan[w.upper()][1])
    for w, (n, _) in plan.items():
        _SIZES[w] = n
    extras = dict(EXTRAS_QUICK if quick else EXTRAS_FULL)
    if a.extras is not None:
        wanted = [] if a.extras.lower() == "none" else [x.strip().upper() for x in a.extras.split(",")]
        extras = {k: v for k, v in extras.items() if k in wanted}
    for kv in a.extra_size:
        k, _, n = kv.partition("=")
        if k.upper() in extras:
            extras[k.upper()] = int(n)
    runs = a.runs or (1 if quick else 3)
    llm = dict(LLM_PROVIDER, rpm=a.llm_rpm or LLM_RPM["quick" if quick else "full"])
    if "LLM" in plan:
        ideal = plan["LLM"][0] * LLM_CALLS / llm["rpm"] * llm["window"]
        llm["deadline_s"] = a.llm_deadline or max(LLM_DEADLINE_FACTOR * ideal, LLM_DEADLINE_MIN_S)
    ceiling_s = a.ceiling_seconds or (3 if quick else 10)
    systems = SYSTEMS if not a.systems else [s for s in SYSTEMS if s.name in a.systems.split(",")]
    params: dict[str, list[str]] = {}
    for kv in a.param:
        name, _, rest = kv.partition(":")
        params.setdefault(name, []).append(rest)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = BENCH / "results"
    log_dir = results_dir / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    t_begin = time.time()
    env = dict(os.environ)
    env.pop("CAIRN_DATABASE_URL", None)
    env["PYTHONWARNINGS"] = "ignore"
    env["PYTHONUNBUFFERED"] = "1"

    say(f"Cairn benchmark {'(quick)' if quick else '(full)'} — {stamp}; logs in {log_dir.relative_to(ROOT)}")
    mach = machine()
    say(f"machine: {mach.get('cpu_model')} x{mach.get('cores_logical')}, {mach.get('ram_gb')} GB, "
        f"kernel {mach.get('kernel')}, Python {mach.get('python')}, load {mach['load_average_at_start']}")

    # -- systems: venvs and services
    skipped: dict[str, str] = {}
    pythons: dict[str, str] = {}
    versions: dict[str, dict[str, str]] = {}
    redis_version = redis_available(REDIS_URL)
    redis_servers: dict[str, PrivateRedis] = {}
    redis_urls: dict[str, str] = {}
    systems = [s for s in systems if not s.workloads or set(s.workloads) & set(plan)]
    for sysm in systems:
        if not (ROOT / sysm.runner).exists():
            skipped[sysm.name] = f"runner {sysm.runner} not found"
            continue
        if sysm.needs_redis:
            url, why = start_redis(sysm, redis_servers, redis_version)
            if url is None:
                skipped[sysm.name] = why
                continue
            if why:
                say(f"  {sysm.name}: {why}")
            redis_urls[sysm.name] = url
        py, note = venv_python(sysm, log_dir)
        if py is None:
            skipped[sysm.name] = note
            continue
        pythons[sysm.name] = py
        versions[sysm.name] = package_versions(py)
    for name, why in skipped.items():
        say(f"  skipping {name}: {why}")
    active = [s for s in systems if s.name in pythons]
    say(f"systems: {', '.join(s.name for s in active) or 'none'}")
    for line in system_legend(active, redis_urls):
        say("  " + line)

    cluster = pgcluster.Cluster()
    results: dict[str, dict[str, Any]] = {s.name: {} for s in active}
    ceiling: list[dict[str, Any]] = []
    extras_out: dict[str, Any] = {}
    settings: dict[str, str] = {}
    try:
        cluster.start()
        settings = cluster.settings()
        say(f"\nPostgres {settings.get('server_version')} on 127.0.0.1:{cluster.port}, data in {cluster.pgdata} "
            "(same settings for every system):")
        for k, v in settings.items():
            if k != "version":
                say(f"  {k} = {v}")

        # -- ceiling
        say(f"\nceiling: pgbench, one single-row INSERT per transaction, -M prepared, {ceiling_s} s per point")
        cluster.create_db("ceiling")
        with cluster.connect("ceiling") as c:
            c.execute("CREATE TABLE ceiling (id bigserial PRIMARY KEY, v integer NOT NULL, "
                      "at timestamptz NOT NULL DEFAULT now())")
        for clients in (1, 4, 16):
            before = cluster.stats("ceiling")
            r = cluster.pgbench("ceiling", "INSERT INTO ceiling (v) VALUES (1);\n", clients, ceiling_s)
            after = cluster.stats("ceiling")
            d = {k: after[k] - before[k] for k in before}
            commits = max(d["xact_commit"], 1)
            r.update({"wal_syncs_per_commit": d["wal_sync"] / commits, "wal_bytes_per_commit": d["wal_bytes"] / commits,
                      "server_cpu_ms_per_commit": d["server_cpu"] * 1000 / commits})
            ceiling.append(r)
            say(f"  {clients:2d} client(s): {r['tps']:,.0f} tps, latency {r['latency_avg_ms']} ms, "
                f"{r['wal_syncs_per_commit']:.2f} WAL syncs/commit")
        cluster.drop_db("ceiling")

        # -- workloads, round-robin over systems so drift hits everyone alike
        keys = workload_keys(plan)
        say(f"\nworkloads ({runs} run(s) each" + (f", LLM {a.llm_runs}" if "LLM" in plan else "") + "): "
            + "; ".join(f"{w} N={n} K={ks}" for w, (n, ks) in plan.items()))
        if "LLM" in plan:
            say(f"LLM storm provider: rpm {llm['rpm']}, {llm['fail_rate']:.0%} 500s, 429 bursts of "
                f"{llm['burst_seconds']:g} s every {llm['burst_every']:g} s, seed {llm['seed']}; deadline "
                f"{llm['deadline_s']:.0f} s")
        failed_streak: dict[tuple[str, str], bool] = {}
        for i in range(max(runs, a.llm_runs if "LLM" in plan else 0)):
            for w, (n, ks) in plan.items():
                if i >= (a.llm_runs if w == "LLM" else runs):
                    continue
                for k in ks:
                    key = f"{w} K={k}" if len(ks) > 1 else w
                    for sysm in active:
                        if failed_streak.get((sysm.name, key)) or (sysm.workloads and w not in sysm.workloads):
                            continue
                        entry = results[sysm.name].setdefault(key, {"runs": [], "size": n, "workers": k})
                        one = run_one(cluster, sysm, pythons[sysm.name], w, n, k, i, log_dir, a.timeout, env,
                                      run_params(sysm, w) + params.get(sysm.name, []), redis_urls.get(sysm.name),
                                      llm, redis_servers.get(sysm.redis_aof) if sysm.needs_redis else None)
                        entry["runs"].append(one)
                        if "error" in one:
                            entry["error"] = one["error"]
                            failed_streak[(sysm.name, key)] = True
                        entry["summary"] = summarize(entry["runs"])

        # -- cairn extras
        if "cairn" in pythons:
            for x, n in extras.items():
                one = run_one(cluster, SYSTEMS[0], pythons["cairn"], x, n, 1, 0, log_dir, max(a.timeout, 1200), env,
                              (EXTRAS_QUICK_PARAMS if quick else []) + params.get("cairn", []), None)
                extras_out[x] = one
    finally:
        cluster.stop()
        for srv in redis_servers.values():
            srv.stop()

    # -- output
    keys = workload_keys(plan)
    rows = table_rows(results, keys, active, skipped)
    ratio_rows, ratio_data = ratios(results, keys, active, ceiling)
    llm_table = llm_rows(results, active, skipped)
    llm_lines = llm_legend(results)
    extra_lines = commit_cost_lines(results, active) + describe_extras(extras_out)
    mach["load_average_at_end"] = os.getloadavg()
    doc = {
        "timestamp": stamp, "mode": "quick" if quick else "full", "duration_s": time.time() - t_begin,
        "machine": mach, "postgres": {"settings": settings, "port": cluster.port},
        "redis": {"machine": redis_version, "urls": redis_urls, "private_aof": sorted(redis_servers)},
        "runs_per_workload": runs, "warmup": WARMUP_NOTE,
        "system_legend": system_legend(active, redis_urls),
        "plan": {w: {"size": n, "workers": ks, "description": DESCRIPTION[w]} for w, (n, ks) in plan.items()},
        "ceiling": ceiling, "systems": {s.name: {"label": s.label, "params": list(s.params),
                                                 "python": pythons.get(s.name),
                                                 "packages": versions.get(s.name, {})} for s in systems},
        "skipped": skipped, "results": results, "extras": extras_out, "ratios": ratio_data,
        "llm_provider": llm if "LLM" in plan else None,
    }
    states = sorted({r.get("code") for e in results.get("cairn", {}).values() for r in e["runs"]} - {None})
    doc["cairn_code"] = states
    say("\n" + "=" * 100)
    if len(states) > 1:
        say(f"WARNING: cairn's code changed during the run ({', '.join(states)}): its runs mix versions")
    say(f"RESULTS ({'quick' if quick else 'full'}, {runs} run(s); median, min–max over runs; per-step figures "
        "include setup and enqueueing)")
    say("ceiling (pgbench single-row INSERT): " + ", ".join(
        f"{c['clients']} client(s) {c['tps']:,.0f} tps" for c in ceiling))
    say(WARMUP_NOTE)
    for line in doc["system_legend"]:
        say(line)
    if rows:
        say(render_text(HEADER, rows))
    if llm_table:
        say(f"\nLLM STORM ({DESCRIPTION['LLM']})")
        say(render_text(LLM_HEADER, llm_table))
        for line in llm_lines:
            say("  " + line)
    say("\nsettings used (each runner's notes; in full in the JSON):")
    for s in results:
        notes = {k: " ".join(str((e.get("runs") or [{}])[-1].get("notes", "")).split())
                 for k, e in results[s].items()}
        common = os.path.commonprefix([n for n in notes.values() if n]) if any(notes.values()) else ""  # noqa: RUF071
        common = common[:common.rfind(";") + 1] if ";" in common else ""
        if common:
            say(f"  {s}: {common}")
        for k, note in notes.items():
            if note[len(common):].strip():
                say(f"    {k}: {note[len(common):].strip()}")
    if extra_lines:
        say("\nW3 commit cost and cairn extras:")
        for line in extra_lines:
            say("  " + line)
    say("\nRATIOS")
    say(render_text(["ratio", "workload", "metric", "cairn", "other", "cairn ÷ other", "", ""], ratio_rows))
    out_path = results_dir / f"{stamp}.json"
    out_path.write_text(json.dumps(doc, indent=1, default=str))
    say(f"\nwrote {out_path.relative_to(ROOT)} (took {(time.time() - t_begin) / 60:.1f} min)")
    # Only a complete full run (every system, workload and extra) replaces the published
    # table; a partial or quick run does so only when asked (--latest).
    complete = not quick and not a.systems and not a.workloads and a.extras is None and not a.size
    if (complete or a.latest) and not a.no_latest:
        shutil.copy(out_path, BENCH / "latest.json")
        update_readme(doc, rows, ratio_rows, extra_lines, ceiling, llm_table, llm_lines)
        say("updated bench/latest.json and the table in bench/README.md")
    return 0


def run_one(cluster: pgcluster.Cluster, sysm: System, py: str, w: str, n: int, k: int, i: int, log_dir: Path,
            timeout: float, env: dict[str, str], extra_params: list[str], redis: str | None,
            llm: dict[str, Any] | None = None, redis_server: PrivateRedis | None = None) -> dict[str, Any]:
    runner = sysm.llm_runner if w == "LLM" else sysm.runner
    if not runner or not (ROOT / runner).exists():
        return {"run": i, "error": f"runner {runner or '(none)'} for {w} not found"}
    provider: StormProvider | None = None
    if w == "LLM":
        assert llm is not None
        try:
            provider = StormProvider(llm, log_dir / f"{sysm.name}-{w}-k{k}-{i}-provider")
        except (RuntimeError, OSError) as exc:
            return {"run": i, "error": str(exc)}
    dbname = f"bench_{sysm.name}_{w.lower()}_k{k}_{i}"
    dsn = cluster.create_db(dbname)
    cmd = [py, str(ROOT / runner), "--dsn", dsn, "--workload", w, "--size", str(n), "--workers", str(k)]
    if redis and sysm.needs_redis:
        cmd += ["--redis", redis]
    log_path = log_dir / f"{sysm.name}-{w}-k{k}-{i}.log"
    if provider is not None:
        assert llm is not None
        cmd += ["--param", f"llm_base_url={provider.base_url}", "--param", f"llm_rpm={llm['rpm']}",
                "--param", f"deadline_s={llm['deadline_s']:g}", "--param", f"calls={LLM_CALLS}"]
        timeout = max(timeout, llm["deadline_s"] + 300)
    for p in extra_params:
        cmd += ["--param", p]
    code = code_state() if sysm.name == "cairn" else None
    t = time.time()
    redis_cpu = redis_server.cpu_seconds() if redis_server else None
    try:
        m = run_measured(cluster, dbname, cmd, log_path, timeout, env)
        if redis_server and redis_cpu is not None:
            m["redis_cpu_s"] = redis_server.cpu_seconds() - redis_cpu
    finally:
        cluster.drop_db(dbname)
        if provider is not None:
            provider.stop()
    out = parse_output(m["stdout"])
    one: dict[str, Any] = {"run": i, "db": dbname, "cmd": " ".join(cmd[1:]), "rc": m["rc"], "wall_s": m["wall"],
                           "pg": m["pg"], "cpu_user": m["cpu_user"], "cpu_sys": m["cpu_sys"],
                           "log": str(log_path.relative_to(ROOT)), "code": code}
    if m["leftover_processes"]:
        one["warning"] = "the runner left processes behind (killed; their CPU is not counted)"
    if m["timed_out"]:
        one["error"] = f"timed out after {timeout:.0f} s"
    elif out is None or m["rc"] != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        one["error"] = f"exit {m['rc']}, no JSON line: {' | '.join(tail)[:300]}"
    elif out.get("error"):
        one["error"] = str(out["error"])
    if out:
        one["output"] = out
        one["notes"] = out.get("notes", "")
    if "error" not in one and out is not None and provider is not None:
        assert llm is not None
        one["provider"] = {**llm, "log": str(provider.log_path.relative_to(ROOT))}
        one["figures"] = {**per_run_figures(w, out, m),
                          **storm_metrics.figures(sysm.name, storm_metrics.read_log(provider.log_path), out, llm)}
        f = one["figures"]
        say(f"  {sysm.name:13s} {w} N={n} K={k} run {i + 1}: {f['llm_completed_pct']:.1f} % by the deadline, "
            f"{f['llm_requests']:,} requests, {f['llm_paid_twice']} paid twice, {f['llm_attempts_burnt_429']} "
            f"attempts burnt by 429, {f['llm_above_rpm']} above RPM, {f['llm_during_burst']} during bursts, makespan "
            f"{fmt(f['llm_makespan_s'])} s (ideal {f['llm_ideal_s']:.0f} s) [{time.time() - t:.0f} s]")
    elif "error" not in one and out is not None:
        one["figures"] = per_run_figures(w, out, m)
        f = one["figures"]
        lat = f" p50 {fmt(f['p50_ms'])} ms p99 {fmt(f['p99_ms'])} ms" if f["p50_ms"] is not None else ""
        incl = f" ({fmt(f['rate_incl_enqueue'])} incl. enqueue)" if f.get("rate_incl_enqueue") else ""
        say(f"  {sysm.name:13s} {w} N={n} K={k} run {i + 1}: {fmt(f['headline'])} {STEP_UNIT.get(w, '')}{incl}{lat}; "
            f"{fmt(f['commits_per_step'], 2)} commits/step ({fmt(f['writes_per_step'], 2)} writing, "
            f"{fmt(f['read_only_commits_per_step'], 2)} read-only), {fmt(f['wal_syncs_per_step'], 2)} WAL syncs/step, "
            f"client CPU {fmt(f['client_cpu_ms_per_step'], 2)} ms/step"
            + (f", Redis CPU {fmt(f['redis_cpu_ms_per_step'], 2)} ms/step" if "redis_cpu_ms_per_step" in f else "")
            + f" [{time.time() - t:.0f} s]")
    else:
        say(f"  {sysm.name:13s} {w} N={n} K={k} run {i + 1}: FAILED — {one.get('error')} (log {one['log']})")
    return one


class StormProvider:
    """The LLM workload's storm provider (bench/storm_provider.py), one process per run, the
    same settings and seed for every system; its request log is what the figures count."""

    def __init__(self, llm: dict[str, Any], stem: Path) -> None:
        self.log_path = stem.with_suffix(".jsonl")
        ready = stem.with_suffix(".port")
        ready.unlink(missing_ok=True)
        self.err = open(stem.with_suffix(".log"), "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "storm_provider.py"), "--port", "0", "--rpm", str(llm["rpm"]),
             "--window", str(llm["window"]), "--fail-rate", str(llm["fail_rate"]),
             "--burst-every", str(llm["burst_every"]), "--burst-seconds", str(llm["burst_seconds"]),
             "--seed", str(llm["seed"]), "--latency-min-ms", str(llm["latency_min_ms"]),
             "--latency-max-ms", str(llm["latency_max_ms"]), "--log", str(self.log_path),
             "--ready-file", str(ready), "--max-seconds", str(llm["deadline_s"] + 900)],
            stdout=subprocess.DEVNULL, stderr=self.err, cwd=str(ROOT))
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the storm provider did not start (see {stem.with_suffix('.log')})")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{ready.read_text().strip()}/v1"

    def stop(self) -> None:
        procs.terminate(self.proc, 30)
        self.err.close()


def system_legend(systems: list[System], redis_urls: dict[str, str]) -> list[str]:
    """What each row's system is: its label, settings, and (Celery) which Redis."""
    lines = []
    for sysm in systems:
        extra = f"; --param {' '.join(sysm.params)}" if sysm.params else ""
        only = f"; only {', '.join(sysm.workloads)}" if sysm.workloads and sysm.workloads != W1_TO_W6 else ""
        where = f"; Redis {redis_urls[sysm.name]}" if sysm.name in redis_urls else ""
        lines.append(f"{sysm.name}: {sysm.label}{extra}{only}{where}")
    return lines


def code_state() -> str:
    """The commit and a digest of uncommitted changes under src/ (cairn's code for this run)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "src"], cwd=ROOT, capture_output=True,
                              check=False).stdout
        return head + (f"+dirty:{hashlib.sha256(diff).hexdigest()[:8]}" if diff else "")
    except OSError:
        return "unknown"


def describe_extras(extras: dict[str, Any]) -> list[str]:
    lines = []
    mem = (extras.get("MEM") or {}).get("output", {}).get("extra")
    if mem:
        for r in mem["memory"]:
            lines.append(f"MEM: worker with cache_size={r['cache_size']:>6} holding {r['workflows']} parked workflows: "
                         f"RSS {r['rss_mb']:.0f} MB (idle {r['idle_rss_mb']:.0f} MB)")
        if mem.get("kb_per_cached_workflow") is not None:
            lines.append(f"MEM: {mem['kb_per_cached_workflow']:.1f} KB of RSS per cached workflow")
    elif extras.get("MEM"):
        lines.append(f"MEM: failed — {extras['MEM'].get('error')}")
    cl = (extras.get("CLAIM") or {}).get("output", {}).get("extra")
    if cl:
        pts = cl["levels"]
        readies = [k for k in pts[0] if k.startswith("ready_")]
        for name in ("claim_workflow_task", "claim_activity_tasks"):
            for rk in readies:
                figures = ", ".join(f"{pt[rk][name]['main']['p50_ms']:.2f} ms (x{pt[rk][name]['ratio_p50']:.2f}) "
                                    f"at {pt['completed_runs']:,}" for pt in pts)
                ratio = pts[-1][rk][name]["ratio_p50"]
                verdict = "within 1.5x" if ratio <= 1.5 else "NOT within 1.5x"
                lines.append(f"CLAIM: {name} ({rk.replace('_', '=')}) p50 vs empty db: {figures} completed runs "
                             f"-> x{ratio:.2f} at {pts[-1]['completed_runs']:,} ({verdict})")
        if cl.get("backlog") and "backlog_explain_ms" in pts[-1]:
            for name in ("claim_workflow_task", "claim_activity_tasks"):
                figures = ", ".join(f"{pt['backlog_explain_ms'][name + '/main']} ms at {pt['completed_runs']:,}"
                                    for pt in pts)
                lines.append(f"CLAIM: {name} with a backlog of {cl['backlog']:,} ready rows, EXPLAIN ANALYZE: "
                             f"{figures} completed runs")
        e2e = cl.get("e2e")
        if e2e:
            lines.append(f"CLAIM: one_step start-to-result p50 {e2e['base']['p50_ms']:.1f} ms empty vs "
                         f"{e2e['main']['p50_ms']:.1f} ms with {cl['completed_runs']:,} completed runs "
                         f"(x{e2e['ratio_p50']:.2f})")
        lines.append(f"CLAIM: tables {cl['table_mb']} MB; bulk insert {cl['bulk_insert_s']:.0f} s")
    elif extras.get("CLAIM"):
        lines.append(f"CLAIM: failed — {extras['CLAIM'].get('error')}")
    return lines


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def update_readme(doc: dict[str, Any], rows: list[list[str]], ratio_rows: list[list[str]],
                  extra_lines: list[str], ceiling: list[dict[str, Any]], llm_table: list[list[str]],
                  llm_lines: list[str]) -> None:
    path = BENCH / "README.md"
    text = path.read_text()
    m = doc["machine"]
    s = doc["postgres"]["settings"]
    body = [
        BEGIN,
        f"Latest run: {doc['timestamp']} ({doc['mode']}, {doc['runs_per_workload']} runs per cell, "
        f"{doc['duration_s'] / 60:.0f} min) on {m.get('cpu_model')} x{m.get('cores_logical')}, "
        f"{m.get('ram_gb')} GB RAM, kernel {m.get('kernel')}, Python {m.get('python')}, "
        f"PostgreSQL {s.get('server_version')} (fsync={s.get('fsync')}, synchronous_commit="
        f"{s.get('synchronous_commit')}, wal_sync_method={s.get('wal_sync_method')}); "
        f"load average at start {tuple(round(x, 1) for x in m['load_average_at_start'])}; "
        f"cairn at {', '.join(doc.get('cairn_code') or ['?'])}. "
        f"Full data: [`latest.json`](latest.json).",
        "",
        "Ceiling (pgbench, single-row INSERT per transaction): " + ", ".join(
            f"{c['clients']} client(s) {c['tps']:,.0f} tps" for c in ceiling) + ".",
        "",
        f"Systems ({doc['warmup']}; commits/step = every committed transaction in the run's database, "
        "read-only polls included; writing/step = transaction ids taken (transactions that wrote or locked "
        "a row); read-only/step = the difference):",
        "",
        *(f"- {line}" for line in doc["system_legend"]),
        "",
        render_md(HEADER, rows),
        "",
        *(f"- {line}" for line in extra_lines),
        "",
        *([render_md(LLM_HEADER, llm_table), "", *(f"- {line}" for line in llm_lines), ""] if llm_table else []),
        render_md(["ratio", "workload", "metric", "cairn", "other", "cairn ÷ other", "", ""], ratio_rows),
        END,
    ]
    block = "\n".join(body)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
