"""The README's marked code, run as typed: the code blocks after a ``<!-- TAG: shell -->`` or
``<!-- TAG: file PATH -->`` comment (invisible when rendered) make one bash script, shell
blocks verbatim and file blocks written to the path the comment names."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.paths import ROOT
from support.workers import clean_env

README = ROOT / "README.md"
EOF_MARK = "CAIRN_README_EOF"


def readme_blocks(readme: str, tag: str) -> Iterator[re.Match[str]]:
    """The blocks marked ``tag``, in order: ``m["body"]``, and ``m["path"]`` for a file block."""
    block = re.compile(rf"<!-- {re.escape(tag)}: (?P<kind>shell|file (?P<path>\S+)) -->\n```[\w-]*\n(?P<body>.*?)```",
                       re.DOTALL)
    return block.finditer(readme)


def readme_script(readme: str, tag: str) -> str:
    """The blocks marked ``tag`` as one bash script: shell blocks as they are, file blocks as
    here-documents written to their path."""
    # A failing command ends the script: the trap stops what it left running in the
    # background (a worker, holding the script's stdout open), so the failure shows at once.
    parts = ["set -eo pipefail -x", "trap '[ $? = 0 ] || kill $(jobs -p) 2>/dev/null' EXIT"]
    for m in readme_blocks(readme, tag):
        body = m["body"]
        if m["path"]:
            assert EOF_MARK not in body
            parts.append(f"cat > {m['path']} <<'{EOF_MARK}'\n{body}{EOF_MARK}")
        else:
            parts.append(body)
    return "\n".join(parts) + "\n"


def run_in_own_group(script: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs the script with bash in a new process group; whatever it left running (a
    background worker) is stopped afterwards. Fails the test after ``timeout`` seconds."""
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"the script did not finish in {timeout:.0f} s\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        _stop_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stop_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def readme_module(tag: str, directory: Path) -> Any:
    """The README's one file block marked ``tag``, written into ``directory`` and imported."""
    (block,) = list(readme_blocks(README.read_text(), tag))
    path = directory / block["path"]
    path.write_text(block["body"])
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_readme(tag: str, directory: Path, db_url: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs the blocks marked ``tag`` in ``directory`` as a newcomer would: this venv first
    on PATH, ``CAIRN_DATABASE_URL`` naming ``db_url``, the directory importable (``cairn
    worker -m NAME`` of a file block). Fails the test unless the script exits 0 without a
    traceback."""
    venv_bin = Path(sys.executable).parent
    env = clean_env(CAIRN_DATABASE_URL=db_url, CAIRN_HOME=str(directory / ".cairn-home"),
                    PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(directory))
    env.pop("VIRTUAL_ENV", None)
    ran = run_in_own_group(readme_script(README.read_text(), tag), directory, env, timeout)
    assert ran.returncode == 0, f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stderr
    return ran


def unmarked(tag: str, needed: tuple[str, ...]) -> list[str]:
    """What of ``needed`` the script of the blocks marked ``tag`` lacks (a marker dropped or a
    block rewritten would leave a README example that no test runs)."""
    script = readme_script(README.read_text(), tag)
    return [text for text in needed if text not in script]
