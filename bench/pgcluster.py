"""A private Postgres cluster for one benchmark run, from the ``pgserver`` wheel's binaries.

Listens on 127.0.0.1 on a free port, trust auth, the settings in ``SETTINGS`` (the same for
every system). Postgres refuses to run as root: as root, the server runs as the system user
``pgserver`` (created if missing), exactly as ``pgserver.postgres_server`` does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

# The same for every system. fsync and synchronous_commit stay on: every commit is durable.
SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_level": "replica",
    "shared_buffers": "512MB",
    "wal_buffers": "16MB",
    "max_wal_size": "8GB",
    "min_wal_size": "1GB",
    "checkpoint_timeout": "30min",
    "max_connections": "400",
    "work_mem": "16MB",
    "maintenance_work_mem": "256MB",
    "autovacuum": "on",
    "track_io_timing": "on",
    "jit": "off",
    "log_min_messages": "warning",
    "log_checkpoints": "on",
}
SHOWN = [*SETTINGS, "wal_sync_method", "commit_delay", "server_version", "max_worker_processes"]


def bin_path() -> Path:
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]
    except ImportError:  # older/newer layouts
        import pgserver  # type: ignore[import-untyped]

        POSTGRES_BIN_PATH = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return Path(POSTGRES_BIN_PATH)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """initdb + pg_ctl start/stop of a throwaway data directory."""

    def __init__(self, base_dir: Path | None = None, port: int | None = None, *, bin_dir: Path | None = None,
                 extra: dict[str, str] | None = None) -> None:
        self.bin = bin_dir or bin_path()
        self.extra = extra or {}  # settings on top of SETTINGS (bench/statements.py: pg_stat_statements)
        self.port = port or free_port()
        self.user = "postgres"  # the database superuser
        self.system_user: str | None = None
        self.base_dir = Path(tempfile.mkdtemp(prefix="cairn-bench-pg-", dir=base_dir))
        self.pgdata = self.base_dir / "data"
        self.log = self.base_dir / "postgres.log"
        self.postmaster_pid: int | None = None

    # -------------------------------------------------------------- lifecycle

    def _as_user(self) -> dict[str, Any]:
        return {"user": self.system_user} if self.system_user else {}

    def _run(self, exe: str, args: list[str], timeout: float = 120) -> str:
        cmd = [str(self.bin / exe), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                             cwd=str(self.base_dir), **self._as_user())
        if out.returncode != 0:
            raise RuntimeError(f"{exe} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def start(self) -> None:
        if os.geteuid() == 0:
            import pwd
            import stat

            from pgserver.utils import (  # type: ignore[import-untyped]
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            self.system_user = "pgserver"
            ensure_user_exists(self.system_user)
            ensure_prefix_permissions(self.base_dir)
            ensure_prefix_permissions(self.bin)
            read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(self.bin, read | execute)
            ensure_folder_permissions(self.bin.parent / "lib", read)
            pw = pwd.getpwnam(self.system_user)
            os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", ["-D", str(self.pgdata), "--auth=trust", "--auth-local=trust",
                             "--encoding=utf8", "-U", self.user, "--no-instructions"])
        conf = [f"{k} = '{v}'" for k, v in {**SETTINGS, **self.extra}.items()]
        conf += ["listen_addresses = '127.0.0.1'", f"port = {self.port}",
                 f"unix_socket_directories = '{self.base_dir}'"]
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# cairn bench\n" + "\n".join(conf) + "\n")
        self._run("pg_ctl", ["-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "60", "start"])
        pid_line = (self.pgdata / "postmaster.pid").read_text().splitlines()[0]
        self.postmaster_pid = int(pid_line.strip())

    def stop(self) -> None:
        try:
            if self.pgdata.exists():
                self._run("pg_ctl", ["-D", str(self.pgdata), "-m", "fast", "-w", "stop"], timeout=60)
        except Exception as exc:
            print(f"warning: pg_ctl stop failed: {exc}")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -------------------------------------------------------------- access

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def create_db(self, name: str) -> str:
        with self.connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_db(self, name: str) -> None:
        with self.connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def settings(self) -> dict[str, str]:
        with self.connect() as c:
            rows = c.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", [SHOWN]).fetchall()
            version = c.execute("SELECT version()").fetchone()
        out = {n: (f"{s}{'' if not u else ' ' + u}") for n, s, u in rows}
        out["version"] = version[0] if version else "?"
        return dict(sorted(out.items()))

    def stats(self, dbname: str) -> dict[str, float]:
        """Cumulative counters: this database's commits (read-only ones included), the cluster's
        transaction ids taken (writing transactions), WAL syncs and bytes."""
        with self.connect() as c:
            c.execute("SELECT pg_stat_clear_snapshot()")
            db = c.execute("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
                           [dbname]).fetchone()
            wal = c.execute("SELECT wal_sync, wal_write, wal_bytes, wal_records, wal_fpi FROM pg_stat_wal").fetchone()
            # The next transaction id, read without taking one: its delta counts the transactions
            # that wrote (or locked) a row, cluster-wide; read-only ones get no id.
            xid = c.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
        assert wal is not None
        assert xid is not None
        return {
            "xact_commit": float(db[0]) if db else 0.0,
            "xact_rollback": float(db[1]) if db else 0.0,
            "wal_sync": float(wal[0]), "wal_write": float(wal[1]), "wal_bytes": float(wal[2]),
            "wal_records": float(wal[3]), "wal_fpi": float(wal[4]), "xids": float(xid[0]),
            "server_cpu": self.server_cpu(),
        }

    def server_cpu(self) -> float:
        """CPU seconds of the postmaster and all its (live and reaped) children."""
        if self.postmaster_pid is None:
            return 0.0
        import psutil

        try:
            pm = psutil.Process(self.postmaster_pid)
            t = pm.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for ch in pm.children():
                try:
                    ct = ch.cpu_times()
                    total += ct.user + ct.system
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return 0.0

    def pgbench(self, dbname: str, script: str, clients: int, seconds: int) -> dict[str, Any]:
        """Runs a custom pgbench script; returns tps and latency average."""
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(script)
            path = f.name
        os.chmod(path, 0o644)
        try:
            env = dict(os.environ)
            cmd = [str(self.bin / "pgbench"), "-n", "-M", "prepared", "-f", path, "-c", str(clients),
                   "-j", str(min(clients, os.cpu_count() or 2)), "-T", str(seconds),
                   "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, dbname]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, env=env, check=False)
        finally:
            os.unlink(path)
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr.strip()}")
        tps = lat = None
        for line in out.stdout.splitlines():
            line = line.strip()
            if line.startswith("tps =") and tps is None:
                tps = float(line.split("=")[1].split()[0])
            if line.startswith("latency average"):
                lat = float(line.split("=")[1].split()[0])
        return {"clients": clients, "seconds": seconds, "tps": tps, "latency_avg_ms": lat}


def wait_ready(dsn: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
