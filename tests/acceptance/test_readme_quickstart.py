"""The first ten minutes: the README's quick start typed in as written, and ``make demo``
beside other workers.

The quick start's code blocks are the ones after a ``<!-- quickstart: shell -->`` or
``<!-- quickstart: file PATH -->`` comment in README.md (invisible when rendered). They run
in order, in one bash session, in an empty directory holding only ``.venv`` (this venv), with
``CAIRN_DATABASE_URL`` (the variable the README tells users to set) naming a fresh database:
shell blocks verbatim, file blocks written to the path the comment names. Nothing is
adapted: a README that does not work as typed fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ROOT, TIMEOUT, WorkerProc, clean_env, spawn_worker
from support.readme import README, readme_blocks, readme_script, run_in_own_group

VENV = Path(sys.executable).parent.parent


def quickstart_script(readme: str) -> str:
    """The quick start as one bash script."""
    return readme_script(readme, "quickstart")


def test_the_readme_marks_a_whole_quick_start():
    script = quickstart_script(README.read_text())
    for needed in ("cat > myapp/flows.py", "cairn db migrate", "cairn worker -m myapp.flows",
                   "cairn start place_order", "--wait", "cairn history order-o-1", "cairn replay order-o-1"):
        assert needed in script, f"the marked quick start lost {needed!r}"


def test_the_quick_start_does_not_collide_with_the_demo():
    """The defect: the quick start's worker served the demo's types (checkout, charge) on
    the demo's queue, so with it running `make demo` hung."""
    readme = README.read_text()
    code = "".join(m["body"] for m in readme_blocks(readme, "quickstart") if m["path"])
    shell = "".join(m["body"] for m in readme_blocks(readme, "quickstart") if not m["path"])
    names = set(re.findall(r"^async def (\w+)", code, re.MULTILINE))
    demo = (ROOT / "examples" / "demo.py").read_text()
    demo_names = {"checkout", "charge", "summarize", "cairn.llm.chat"}
    assert names
    assert not names & demo_names
    (queue,) = set(re.findall(r"cairn worker .*--queue (\S+)", shell))
    assert queue not in ("default", *re.findall(r'^QUEUE = "(\w+)"', demo, re.MULTILINE))
    assert f"cairn start place_order -m myapp.flows --queue {queue} " in shell


@pytest.fixture
def newcomer_dir(tmp_path: Path) -> Path:
    """An empty directory with the venv that ``make demo`` leaves, as ``.venv``."""
    home = tmp_path / "newcomer"
    home.mkdir()
    (home / ".venv").symlink_to(VENV)
    return home


def test_the_quick_start_works_as_typed(newcomer_dir, empty_db_url):
    env = clean_env(CAIRN_DATABASE_URL=empty_db_url, CAIRN_HOME=str(newcomer_dir / ".cairn-home"),
                    PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    ran = run_in_own_group(quickstart_script(README.read_text()), newcomer_dir, env, TIMEOUT * 2)
    assert ran.returncode == 0, f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stderr
    lines = ran.stdout.splitlines()
    # --wait printed the activity's receipt: the idempotency key names the workflow id.
    (result,) = [line for line in lines if line.startswith('"receipt o-1 ')]
    assert "order-o-1/" in result
    history = ran.stdout[ran.stdout.index("SEQ"):]
    for event in ("WorkflowStarted", "ActivityScheduled", "ActivityCompleted", "TimerStarted", "TimerFired",
                  "WorkflowCompleted"):
        assert event in history, f"{event} not in the history:\n{history}"
    (replayed,) = [line for line in lines if line.startswith("OK: ")]
    assert re.fullmatch(r"OK: \d+ events of order-o-1 replay with the current code", replayed)


# ---------------------------------------------------------------- make demo beside other workers

STRAY = """\
from cairn import workflow


@workflow.defn(name="checkout")
async def checkout(order: dict) -> str:
    await workflow.wait_signal("never")     # another 'checkout': it never finishes
    return "never"
"""


@pytest.fixture
def stray_worker(tmp_path: Path, db_url: str) -> Iterator[object]:
    """Starts ``cairn worker`` serving another app's ``checkout`` on a given queue."""
    (tmp_path / "stray.py").write_text(STRAY)
    procs: list[WorkerProc] = []

    def start(queue: str) -> WorkerProc:
        w = spawn_worker(f"stray-{queue}", db_url, "stray", cwd=tmp_path, log_path=tmp_path / f"stray-{queue}.log",
                         options=["--queue", queue], cairn=str(VENV / "bin" / "cairn"))
        procs.append(w)
        w.wait_started()
        return w

    yield start
    for w in procs:
        w.kill9()


# How the demo names the CLI, run from the checkout (as `make demo` does): the venv's cairn.
DEMO_CAIRN = os.path.relpath(VENV / "bin" / "cairn", ROOT)


def _demo(db_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--database-url", db_url, *extra],
                          cwd=ROOT, env=clean_env(), text=True, capture_output=True, timeout=TIMEOUT * 3)


def test_the_demo_finishes_beside_a_worker_of_another_checkout(stray_worker, db_url):
    """The defect: the quick start's worker served the demo's type name on the demo's
    queue, took the demo's run, and the demo hung and ended in a traceback."""
    stray_worker("default")
    ran = _demo(db_url, "--timeout", "30")
    assert ran.returncode == 0, f"stdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    assert "result: \"receipt:o-" in ran.stdout
    assert f"see it again with: {DEMO_CAIRN} history order-o-" in ran.stdout


def test_a_demo_that_cannot_finish_says_why_without_a_traceback(db_url):
    # Its checkout retries a charge and sleeps 1 s on a timer: it cannot finish in 0.5 s.
    ran = _demo(db_url, "--timeout", "0.5")
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr, ran.stderr
    (message,) = ran.stderr.strip().splitlines()[-1:]
    assert message.startswith("error: the demo could not finish: run order-o-")
    assert "did not finish within 0.5 s" in message
    assert "serving queue 'demo'" in message
    assert f"{DEMO_CAIRN} describe order-o-" in message
