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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.paths import ROOT

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
    parts = ["set -eo pipefail -x"]
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
