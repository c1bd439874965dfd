"""The embedded default: no database URL anywhere, CAIRN_HOME set; concurrent and later
invocations of the CLI start or join one server that outlives them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from acceptance_support import HERE, cairn_cli

from cairn.store import db
from support import CAIRN, TIMEOUT, clean_env

pytestmark = pytest.mark.acceptance


@pytest.fixture
def cairn_home() -> Iterator[Path]:
    # A short path: the server's unix socket lives in the data directory.
    home = Path(tempfile.mkdtemp(prefix="cairn-emb-"))
    try:
        yield home
    finally:
        if (home / "pgdata").exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pgserver

                pgserver.get_server(home / "pgdata", cleanup_mode="stop").cleanup()
        shutil.rmtree(home, ignore_errors=True)


def postmaster_pid(home: Path) -> int:
    pid_file = home / "pgdata" / "postmaster.pid"
    assert pid_file.exists(), "no embedded server is running"
    pid = int(pid_file.read_text().splitlines()[0])
    os.kill(pid, 0)  # alive
    return pid


def run_concurrently(env: dict[str, str], *commands: list[str]) -> list[tuple[int, str, str]]:
    procs = [subprocess.Popen([CAIRN, *cmd], cwd=HERE, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cmd in commands]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT * 2)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_concurrent_invocations_share_one_embedded_server(cairn_home):
    env = clean_env(CAIRN_HOME=str(cairn_home))
    assert "CAIRN_DATABASE_URL" not in env

    # A fresh home: three processes race to create, start and migrate the server.
    results = run_concurrently(env, ["db", "migrate", "--json"], ["db", "migrate", "--json"], ["list", "--json"])
    for code, _out, err in results:
        assert code == 0, err
        assert "Traceback" not in err
    applied = [json.loads(out)["applied"] for _, out, _ in results[:2]]
    every = [m.version for m in db.migrations()]
    assert sorted(applied) in ([[], []], [[], every]), applied  # `list` may have migrated first
    assert json.loads(results[2][1])["runs"] == []
    pid = postmaster_pid(cairn_home)

    # Later invocations, concurrent again, join the same server.
    results = run_concurrently(env, ["db", "status", "--json"], ["list", "--json"])
    for code, _, err in results:
        assert code == 0, err
    assert json.loads(results[0][1]) == {"applied": every, "pending": [], "changed": [], "up_to_date": True}
    assert postmaster_pid(cairn_home) == pid

    # State persists across invocations: what one writes, the next reads.
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "60", "--id", "emb-1", env=env)
    assert ran.code == 0, ran.err
    ran = cairn_cli("list", "--json", env=env)
    assert ran.code == 0, ran.err
    assert [(r["workflow_id"], r["status"]) for r in json.loads(ran.out)["runs"]] == [("emb-1", "running")]
    ran = cairn_cli("describe", "emb-1", "--json", env=env)
    assert json.loads(ran.out)["workflow_type"] == "sleeper"
    assert postmaster_pid(cairn_home) == pid
    assert len(list((cairn_home / "pgdata").glob("postmaster.pid"))) == 1
