"""Shared plumbing for the peer runners (DBOS, Procrastinate, Celery).

Runner protocol: see bench/README.md. Each runner prints exactly one JSON line on
stdout; everything else goes to stderr. To make that robust, `Runner.start()`
moves the process's real stdout aside and points fd 1 at stderr, so a library
(or a worker subprocess inheriting our fds) printing to stdout cannot corrupt the
result line.

Only the standard library is used here: this module is imported from three
different venvs.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

FULL_SIZES = {"W1": 5000, "W2": 1000, "W3": 300, "W4": 200, "W5": 5000, "W6": 100, "LLM": 1000}
W2_STEPS = 10  # sequential activities per W2 workflow
W4_FANOUT = 20  # parallel activities per W4 workflow
W5_SHORT = 50  # the short W5 workflow
# Untimed warm-up, the same for every system (bench/run.py passes --param warmup=N): W3 runs
# this many one-activity workflows before the timed ones, W5 this many 3-step workflows.
WARMUP = {"W3": 5, "W5": 1}
W5_WARMUP_STEPS = 3
# The next transaction id, read without taking one (read-only transactions get none).
NEXT_XID_SQL = "select pg_snapshot_xmax(pg_current_snapshot())::text::bigint"


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--workload", required=True, choices=sorted(FULL_SIZES))
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--redis", default=None)
    p.add_argument("--param", action="append", default=[])
    # Internal: the runner re-invokes itself as a worker subprocess.
    p.add_argument("--role", default="driver")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--ready-file", default=None)
    p.add_argument("--mode", default=None)
    args = p.parse_args(argv)
    if args.size is None:
        args.size = FULL_SIZES[args.workload]
    params: dict[str, str] = {}
    for item in args.param:
        if "=" in item:
            k, v = item.split("=", 1)
            params[k.strip()] = v.strip()
    args.params = params
    if args.role == "worker":
        die_with_parent()
    return args


def param_float(args: argparse.Namespace, key: str, default: float) -> float:
    try:
        return float(args.params.get(key, default))
    except ValueError:
        return default


def libpq_dsn(dsn: str) -> str:
    """postgresql+psycopg://... -> postgresql://... (psycopg wants plain URLs)."""
    scheme, rest = dsn.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else dsn


def redis_host_port(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    return (u.hostname or "127.0.0.1", u.port or 6379)


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    """Raw RESP PING, so this works without the redis package."""
    import socket

    host, port = redis_host_port(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces/parens: ppid is 2 fields after the last ')'
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def die_with_parent() -> None:
    """Called first thing in a worker: it gets SIGKILL if the runner dies (e.g. killed
    by the harness's timeout). Done in the worker rather than in a preexec_fn, which is
    unsafe when the runner has threads (DBOS)."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if parent == 1:
        os._exit(1)


class Worker:
    """A worker subprocess (and whatever children it forks, e.g. Celery's pool).

    Workers stay in the runner's process group, so a harness that kills the runner's
    group also takes them; each also dies with the runner (PR_SET_PDEATHSIG, set by
    the worker itself)."""

    def __init__(self, popen: subprocess.Popen, ready_file: str | None):
        self.popen = popen
        self.ready_file = ready_file

    @property
    def pid(self) -> int:
        return self.popen.pid

    def is_ready(self) -> bool:
        return self.ready_file is not None and os.path.exists(self.ready_file)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _kill_all(self, pids: list[int]) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)

    def kill9(self) -> None:
        """Crash: SIGKILL the worker and all its descendants at once."""
        tree = [self.pid] + (descendants(self.pid) if self.alive() else [])
        self._kill_all(tree)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._kill_all(tree)  # a child forked meanwhile is still ours to sweep

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the worker's main process (it stops its own children), then sweep."""
        tree: list[int] = []
        if self.popen.poll() is None:
            tree = descendants(self.pid)
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"worker {self.pid} did not stop in {grace}s; SIGKILL")
        self._kill_all([self.pid] + [p for p in tree if _is_alive(p)])
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"worker {self.pid} could not be reaped")
        if self.ready_file:
            with contextlib.suppress(OSError):
                os.unlink(self.ready_file)


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class Runner:
    """Result assembly, worker bookkeeping and guaranteed cleanup for a driver."""

    def __init__(self, system: str, args: argparse.Namespace):
        self.system = system
        self.args = args
        self.workers: list[Worker] = []
        self.all_pids: list[int] = []
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self._out = None
        self._tmpdir = tempfile.mkdtemp(prefix=f"bench-{system}-")
        self._emitted = False

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        # Keep the real stdout for the one JSON line; send fd 1 to stderr.
        sys.stdout.flush()
        self._out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        atexit.register(self.cleanup)

        def on_term(signum, _frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    def cleanup(self) -> None:
        for w in self.workers:
            try:
                w.stop()
            except Exception:
                traceback.print_exc()
        self.workers = []
        with contextlib.suppress(OSError):
            os.rmdir(self._tmpdir)

    # -- workers -----------------------------------------------------------
    def spawn(
        self,
        cmd: list[str],
        env: dict[str, str] | None = None,
        ready: bool = True,
    ) -> Worker:
        ready_file = None
        if ready:
            ready_file = os.path.join(self._tmpdir, f"ready-{len(self.all_pids)}")
            if os.path.exists(ready_file):
                os.unlink(ready_file)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        if ready_file:
            full_env["BENCH_READY_FILE"] = ready_file
        popen = subprocess.Popen(
            cmd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),
            stderr=sys.stderr.fileno(),
        )
        w = Worker(popen, ready_file)
        self.workers.append(w)
        self.all_pids.append(popen.pid)
        return w

    def self_cmd(self, script: str, role: str, index: int, mode: str = "") -> list[str]:
        a = self.args
        cmd = [
            sys.executable,
            script,
            "--role",
            role,
            "--index",
            str(index),
            "--dsn",
            a.dsn,
            "--workload",
            a.workload,
            "--size",
            str(a.size),
            "--workers",
            str(a.workers),
        ]
        if mode:
            cmd += ["--mode", mode]
        if a.redis:
            cmd += ["--redis", a.redis]
        for item in a.param:
            cmd += ["--param", item]
        return cmd

    def wait_ready(self, workers: list[Worker], timeout: float = 120.0) -> float:
        """Wait until every worker touched its ready file; returns perf_counter then."""
        deadline = time.perf_counter() + timeout
        while True:
            if all(w.is_ready() for w in workers):
                return time.perf_counter()
            for w in workers:
                if not w.alive():
                    raise RuntimeError(
                        f"worker {w.pid} exited with {w.popen.returncode} before ready"
                    )
            if time.perf_counter() > deadline:
                raise RuntimeError("workers not ready in time")
            time.sleep(0.005)

    def drain(self, enqueue: Callable[[], None], spawn: Callable[[], list[Worker]],
              wait: Callable[[], float]) -> float:
        """W1, W2, W4: enqueue the backlog with no worker running, then start the workers and
        wait (``wait()`` returns the epoch of the last completion). Returns the drain's
        seconds (worker start-up included); extra.enqueue_and_drain_s is the time from the
        first enqueue to the last completion."""
        te, te_epoch = time.perf_counter(), time.time()
        enqueue()
        t0, t0_epoch = time.perf_counter(), time.time()
        self.extra["enqueue_s"] = round(t0 - te, 3)
        t_ready = self.wait_ready(spawn())
        last_epoch = wait()
        t_end = time.perf_counter()
        seconds = min(last_epoch - t0_epoch, t_end - t0)
        self.extra["startup_s"] = round(t_ready - t0, 3)
        self.extra["seconds_excl_startup"] = round(seconds - (t_ready - t0), 3)
        self.extra["enqueue_and_drain_s"] = round(min(last_epoch - te_epoch, t_end - te), 4)
        self.notes.append("timed window includes worker start-up (see extra.startup_s); "
                          "extra.enqueue_and_drain_s: first enqueue to last completion")
        return seconds

    def latency_loop(self, n: int, one: Callable[[int], None],
                     next_xid: Callable[[], int] | None = None) -> tuple[float, list[float]]:
        """W3: ``warmup`` untimed workflows (indices n, n+1, ...), then N timed ones, each
        started and waited for (``one(i)``) before the next. Returns (seconds, latencies).
        With ``next_xid`` (the database's next transaction id, see NEXT_XID_SQL), records
        extra.window_xids: the writing transactions of the timed window, exactly."""
        warmup = int(param_float(self.args, "warmup", WARMUP["W3"]))
        for j in range(warmup):
            one(n + j)
        lat = []
        xid0 = next_xid() if next_xid else 0
        t0 = time.perf_counter()
        for i in range(n):
            ts = time.perf_counter()
            one(i)
            lat.append((time.perf_counter() - ts) * 1000.0)
        seconds = time.perf_counter() - t0
        if next_xid:
            self.extra["window_xids"] = next_xid() - xid0
        self.extra.update(summarize(lat))
        self.notes.append(f"{warmup} untimed warm-up workflows")
        return seconds, lat

    def await_recovery(self, n: int, new: Worker, t_kill: float, lease_s: float,
                       poll: Callable[[dict[Any, float]], None]) -> list[float]:
        """W6: after the kill, calls ``poll(progressed)`` (which records each workflow's
        kill-to-progress seconds) until all N progressed, the replacement worker ``new``
        alive; records lease_s, worker_ready_s and the percentiles. Returns the latencies, ms."""
        progressed: dict[Any, float] = {}
        t_ready = None
        deadline = time.time() + 300
        while len(progressed) < n:
            if t_ready is None and new.is_ready():
                t_ready = time.perf_counter()
            poll(progressed)
            if len(progressed) >= n:
                break
            if time.time() > deadline:
                raise RuntimeError(f"only {len(progressed)}/{n} progressed")
            if not new.alive():
                raise RuntimeError("replacement worker died")
            time.sleep(0.05)
        lat_ms = sorted(max(0.0, v) * 1000.0 for v in progressed.values())
        self.extra["lease_s"] = lease_s
        if t_ready is not None:
            self.extra["worker_ready_s"] = round(t_ready - t_kill, 3)
        self.extra.update(summarize(lat_ms))
        return lat_ms

    def check_alive(self) -> None:
        for w in self.workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.pid} died (exit {w.popen.returncode})")

    # -- output ------------------------------------------------------------
    def emit(
        self,
        steps: int | None,
        seconds: float | None,
        latencies_ms: list[float] | None = None,
        error: str | None = None,
    ) -> None:
        if self._emitted:
            return
        rec: dict[str, Any] = {
            "system": self.system,
            "workload": self.args.workload,
            "steps": steps,
            "seconds": None if seconds is None else round(seconds, 4),
            "latencies_ms": None
            if latencies_ms is None
            else [round(x, 3) for x in latencies_ms],
            "worker_pids": list(self.all_pids),
            "notes": "; ".join(self.notes),
            "extra": self.extra,
        }
        if error:
            rec["error"] = error
        out = self._out or sys.__stdout__
        out.write(json.dumps(rec) + "\n")
        out.flush()
        self._emitted = True


def main_wrapper(system: str, args: argparse.Namespace, body: Callable[[Runner], None]) -> int:
    runner = Runner(system, args)
    runner.start()
    try:
        body(runner)
    except SystemExit as e:
        runner.cleanup()
        if not runner._emitted:
            runner.emit(None, None, error=f"interrupted ({e.code})")
        return 1
    except BaseException as e:
        traceback.print_exc()
        runner.cleanup()
        runner.emit(None, None, error=f"{type(e).__name__}: {e}")
        return 0
    runner.cleanup()
    if not runner._emitted:
        runner.emit(None, None, error="runner produced no result")
    return 0


def main(system: str, args: argparse.Namespace, worker_main: Callable[[], int],
         driver: Callable[[Runner], None]) -> int:
    """A runner's entry point: the worker role, or the driver."""
    if args.role == "worker":
        return worker_main()
    return main_wrapper(system, args, driver)


def package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


def step_desc(ms: float) -> str:
    """W6's step, for the notes."""
    return f"sleeps {ms:g} ms" if ms else "trivial, x+1"


def warmup_w5(args: argparse.Namespace, one: Callable[[int, int], Any]) -> int:
    """W5's untimed warm-up: ``one(wf, steps)`` for workflows -1, -2, ... of 3 steps."""
    warmup = int(param_float(args, "warmup", WARMUP["W5"]))
    for j in range(warmup):
        one(-1 - j, W5_WARMUP_STEPS)
    return warmup


def touch_ready() -> None:
    """Called by a worker process once it is able to take work."""
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


def summarize(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {}
    s = sorted(lat)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, round(p / 100.0 * (len(s) - 1)))]

    return {
        "p50_ms": round(pct(50), 3),
        "p95_ms": round(pct(95), 3),
        "p99_ms": round(pct(99), 3),
        "max_ms": round(s[-1], 3),
    }


# ---- the LLM storm workload (bench/README.md, "Workload LLM") -------------------------

# The peers' retry settings, the same for all three, close to cairn's default policy
# (0.5 s, x2, capped at 8 s as cairn's chat default is; cairn's attempts are unlimited; Celery's
# retry_backoff factor is a whole number of seconds: 1, with its default full jitter, which
# averages half of each delay): a bounded number of
# attempts is what their documented APIs want, and 20 is far more than a 30 % failure
# rate needs (0.3^19), so a call fails for good only by burning attempts on 429s.
LLM_MAX_ATTEMPTS = 20
LLM_RETRY_INITIAL_S = 0.5
LLM_RETRY_BACKOFF = 2.0
LLM_RETRY_MAX_S = 8.0  # DBOS steps have no cap (its API takes interval and rate only)
LLM_MODEL = "storm-chat"
LLM_TIMEOUT_S = 60.0


class LLMThrottled(Exception):
    """The provider answered 429; ``retry_after`` in seconds (None without the header)."""

    def __init__(self, retry_after: float | None, status: int = 429):
        super().__init__(f"HTTP {status}, retry after {retry_after} s")
        self.retry_after = retry_after


class LLMFailed(Exception):
    """The provider answered a retryable error (5xx) or the request failed."""


def llm_params(args: argparse.Namespace) -> dict[str, Any]:
    p = args.params
    return {"base_url": p["llm_base_url"], "rpm": int(p["llm_rpm"]), "deadline_s": float(p.get("deadline_s", 300)),
            "calls": int(p.get("calls", 3))}


def llm_call(base_url: str, workflow_id: str, n: int) -> str:
    """ONE chat request (one attempt) for call n of a workflow, the same body as cairn's
    (the ``call <id>/<n>`` marker tells the provider calls apart); returns the answer's
    text, raises LLMThrottled on 429 (with Retry-After) and LLMFailed on 5xx/errors."""
    import urllib.error
    import urllib.request

    body = json.dumps({"model": LLM_MODEL, "max_tokens": 16, "messages": [
        {"role": "user", "content": f"Summarise part {n} of the report in one line. call {workflow_id}/{n}"}]})
    req = urllib.request.Request(f"{base_url}/chat/completions", data=body.encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=LLM_TIMEOUT_S) as resp:
            answer = json.loads(resp.read())
            return str(answer["choices"][0]["message"]["content"])
    except urllib.error.HTTPError as e:
        e.read()
        if e.code == 429:
            ra = e.headers.get("retry-after")
            try:
                retry_after = float(ra) if ra is not None else None
            except ValueError:
                retry_after = None
            raise LLMThrottled(retry_after) from None
        raise LLMFailed(f"HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise LLMFailed(f"{type(e).__name__}: {e}") from None


def llm_backoff(retries_so_far: int) -> float:
    """The peers' backoff before retry number retries_so_far + 1 (no jitter)."""
    return min(LLM_RETRY_INITIAL_S * LLM_RETRY_BACKOFF ** retries_so_far, LLM_RETRY_MAX_S)


LLM_POLL_S = 0.5  # how often a driver counts closed workflows


def llm_wait(r: Runner, n: int, deadline_epoch: float, count: Callable[[], tuple[int, int]]) -> None:
    """Waits until the N workflows are closed (``count()`` -> (done, failed)) or the deadline."""
    last = -1
    while True:
        done, failed = count()
        if done + failed != last:
            log(f"{done}/{n} done, {failed} failed")
            last = done + failed
        if done + failed >= n or time.time() >= deadline_epoch:
            return
        r.check_alive()
        time.sleep(LLM_POLL_S)


def llm_report(r: Runner, llm: dict[str, Any], notes: str, window_start: float, seconds: float,
               completed: dict[str, float], statuses: dict[str, int]) -> None:
    """The LLM runners' one JSON line: each completed workflow's completion time (epoch)."""
    done_s = [at - window_start for at in completed.values()]
    r.notes.append(notes)
    r.extra.update({"window_start": window_start, "deadline_s": llm["deadline_s"], "calls": llm["calls"],
                    "size": r.args.size, "completed": completed, "statuses": statuses})
    r.emit(len(completed) * llm["calls"], max(done_s) if done_s else seconds)
