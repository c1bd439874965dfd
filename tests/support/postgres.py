"""A Postgres the test owns: initdb and pg_ctl on a throwaway data directory, for faults no
shared server may suffer (a crash, a restart)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _postgres_bin() -> Path:
    """The system's PostgreSQL binaries, else the pgserver wheel's."""
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if system:
        return system[-1].parent
    import pgserver  # type: ignore[import-untyped]

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """initdb + pg_ctl of a throwaway data directory on a free port, for faults no shared
    server may suffer (``pg_ctl stop -m immediate``). Postgres refuses to run as root: as
    root the server runs as the system user ``pgserver`` (created if missing), as
    ``pgserver.postgres_server`` does."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="cairn-chaos-pg-"))
        self.pgdata = self.base / "data"
        self.log = self.base / "postgres.log"
        self.user: str | None = None

    def _run(self, exe: str, *args: str, timeout: float = 120) -> None:
        out = subprocess.run([str(self.bin / exe), *args], capture_output=True, text=True, timeout=timeout,
                             check=False, cwd=self.base, **({"user": self.user} if self.user else {}))
        if out.returncode != 0:
            raise RuntimeError(f"{exe} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}\n"
                               f"{self.log.read_text(errors='replace')[-2000:] if self.log.exists() else ''}")

    def init(self) -> None:
        if os.geteuid() == 0:
            import pwd
            import warnings

            with warnings.catch_warnings():  # platformdirs warns without XDG_RUNTIME_DIR (containers, CI)
                warnings.simplefilter("ignore")
                from pgserver.utils import ensure_user_exists  # type: ignore[import-untyped]

            self.user = "pgserver"
            ensure_user_exists(self.user)
            pw = pwd.getpwnam(self.user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8",
                  "--no-instructions")
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.base}'\nfsync = on\nsynchronous_commit = on\n"
                    "max_connections = 200\nshared_buffers = '64MB'\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "60", "start")

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: no checkpoint, every backend killed; recovery replays WAL."""
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if (self.pgdata / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A running :class:`PrivatePostgres`, removed at teardown."""
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.close()
