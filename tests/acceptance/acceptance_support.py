"""Support for acceptance tests: real ``cairn`` subprocesses (workers and commands),
bounded polling, and the side tables that ``flows.py`` activities write to."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

CAIRN = str(Path(sys.executable).parent / "cairn")
TIMEOUT = 60.0  # generous: the machine may be loaded


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no CAIRN_DATABASE_URL unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAIRN_DATABASE_URL", "CAIRN_HOME")}
    env.update(extra)
    return env


def query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def wait_for(what: str, check: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.1,
              procs: tuple[WorkerProc, ...] = ()) -> Any:
    """Polls ``check`` until it returns something truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} (rc={p.proc.poll()}):\n{p.log()}" for p in procs)
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(interval)


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_started(self, timeout: float = TIMEOUT) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return " running " in self.log()

        wait_for(f"worker {self.name} to start", started, timeout, procs=(self,))

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    """``workers(name, *extra_args)`` starts ``cairn worker -m flows`` (or ``module=``) on the
    test database (cwd = this directory) and waits until it claims work. All are killed at teardown.

    Workers get a short lease and poll interval unless ``defaults=True``: then they run
    with ``cairn worker``'s own defaults, as a new user's would."""
    started: list[WorkerProc] = []

    def start(name: str = "w", *extra: str, wait: bool = True, verbose: int = 0, defaults: bool = False,
              module: str = "flows") -> WorkerProc:
        log_path = tmp_path / f"worker-{name}-{len(started)}.log"
        tuned = [] if defaults else ["--lease-seconds", "2", "--poll-interval", "0.2"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [CAIRN, *(["-" + "v" * verbose] if verbose else []), "--database-url", db_url,
                 "worker", "-m", module, *tuned, "--identity", name, *extra],
                cwd=HERE, stdout=log, stderr=subprocess.STDOUT, env=clean_env(FLOWS_DB_URL=db_url),
            )
        w = WorkerProc(name, proc, log_path)
        started.append(w)
        if wait:
            w.wait_started()
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def side_tables(db_url: str) -> str:
    """Creates the tables ``flows.py`` activities record attempts and effects in."""
    query(db_url, """
        CREATE TABLE public.attempts (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            key text NOT NULL, workflow_id text NOT NULL, label text NOT NULL,
            attempt int NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
        CREATE TABLE public.effects (
            key text PRIMARY KEY, workflow_id text NOT NULL, label text NOT NULL,
            attempt int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
    """)
    return db_url


@dataclass
class Ran:
    code: int
    out: str
    err: str


def cairn_cli(*args: str, db_url: str | None = None, cwd: Path = HERE, env: dict[str, str] | None = None,
              timeout: float = TIMEOUT) -> Ran:
    """Runs the real ``cairn`` entry point and returns its exit code and output."""
    cmd = [CAIRN, *(["--database-url", db_url] if db_url else []), *args]
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=env if env is not None else clean_env())
    return Ran(p.returncode, p.stdout, p.stderr)


def start_runs(db_url: str, workflow: Any, inputs: list[tuple[str, Any]]) -> list[str]:
    """Starts runs in-process (``(workflow_id, arg)`` pairs); returns their run ids."""
    from cairn import Client

    async def go() -> list[str]:
        async with await Client.connect(db_url) as client:
            return [str((await client.start(workflow, arg, id=wid)).run_id) for wid, arg in inputs]

    return asyncio.run(go())


def run_status(db_url: str, workflow_id: str) -> str | None:
    rows = query(db_url, "SELECT status FROM cairn.runs WHERE workflow_id = %s ORDER BY run_id DESC LIMIT 1",
                 (workflow_id,))
    return rows[0][0] if rows else None


def history(db_url: str, workflow_id: str) -> list[tuple[int, str, dict[str, Any], Any]]:
    return [(s, t, d, a) for s, t, d, a in query(db_url, """
        SELECT h.seq, h.type, h.data, h.at FROM cairn.history h JOIN cairn.runs r USING (run_id)
        WHERE r.workflow_id = %s ORDER BY h.seq""", (workflow_id,))]
