"""The embedded server's start-up stops a server left running on its data directory by a
deleted install (``rm -rf .venv``): joining it fails with "could not access file
$libdir/plpgsql" (seen on this machine, 2026-12-07)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from cairn.store.db import orphaned_postmaster, stop_postmaster

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_a_server_whose_binary_was_deleted_is_found_and_stopped(tmp_path):
    binary = tmp_path / "bin" / "postgres"  # a copy of sleep, run, then deleted as a venv is
    binary.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    proc = subprocess.Popen([str(binary), "60"])
    try:
        pgdata = tmp_path / "pgdata"
        pgdata.mkdir()
        (pgdata / "postmaster.pid").write_text(f"{proc.pid}\n{pgdata}\n")
        assert orphaned_postmaster(pgdata) is None  # its install is still there: joined as before
        shutil.rmtree(binary.parent)
        assert orphaned_postmaster(pgdata) == proc.pid
        began = time.monotonic()
        stop_postmaster(proc.pid, timeout=10)
        assert proc.wait(timeout=5) is not None
        assert time.monotonic() - began < 10
    finally:
        proc.kill()
        proc.wait()


def test_no_pid_file_or_a_dead_pid_is_no_orphan(tmp_path):
    assert orphaned_postmaster(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text("999999999\n")
    assert orphaned_postmaster(tmp_path) is None
