"""Workers for tests: ``cairn worker`` subprocesses (to kill -9, freeze, restart) and
in-process ones (through :mod:`cairn.testing`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cairn import Worker, testing
from support.waiting import TIMEOUT, wait_for

CAIRN = str(Path(sys.executable).parent / "cairn")
TESTS = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no CAIRN_DATABASE_URL (nor CAIRN_HOME) unless given;
    tests/ on PYTHONPATH, so a module it imports from a test directory (``-m
    acceptance_support``) finds ``support`` as the tests do (pytest's ``pythonpath``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAIRN_DATABASE_URL", "CAIRN_HOME")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@dataclass
class WorkerProc:
    """A worker subprocess and the file its output goes to."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False  # by the test (kill9): its exit is not a failure

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_started(self, timeout: float = TIMEOUT, interval: float = 0.1) -> None:
        """Waits until the worker logs that it is running; fails the test if it exits first."""
        def started() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return " running " in self.log()

        wait_for(f"worker {self.name} to start", started, timeout, interval, procs=(self,))

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)
        self.killed = True


def spawn_worker(name: str, url: str, module: str, *, cwd: Path, log_path: Path, options: Sequence[str] = (),
                 extra: Sequence[str] = (), env: dict[str, str] | None = None, verbose: int = 0,
                 cairn: str = CAIRN) -> WorkerProc:
    """Starts ``cairn [-v…] --database-url URL worker -m MODULE OPTIONS --identity NAME EXTRA``
    in ``cwd`` (where ``MODULE`` lives), its output to ``log_path``; does not wait for it."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [cairn, *(["-" + "v" * verbose] if verbose else []), "--database-url", url,
             "worker", "-m", module, *options, "--identity", name, *extra],
            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env if env is not None else clean_env())
    return WorkerProc(name, proc, log_path)


@contextlib.asynccontextmanager
async def running_worker(url: str, **kwargs: Any) -> AsyncIterator[Worker]:
    """An in-process worker that runs for the ``async with`` block and is stopped (drained)
    at its end."""
    async with testing.Workers(url) as workers:
        yield await workers.start(**kwargs)
