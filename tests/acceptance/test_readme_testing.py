"""The README's "Testing your workflows" typed in as written: the blocks after a
``<!-- testing: file PATH -->`` or ``<!-- testing: shell -->`` comment run in order, in one
bash session, in an application directory holding only ``tests/``, with this venv first on
PATH and ``CAIRN_DATABASE_URL`` naming a fresh, migrated database."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support import TIMEOUT, clean_env
from support.readme import README, readme_script, run_in_own_group

pytestmark = pytest.mark.acceptance

VENV_BIN = Path(sys.executable).parent


def test_the_readme_marks_the_testing_example():
    script = readme_script(README.read_text(), "testing")
    for needed in ("cat > tests/test_greeting.py", "from cairn.testing import replay_history, worker",
                   "cairn history greeting-ada --json > tests/histories/greeting.json",
                   "pytest tests/test_greeting.py\n"):
        assert needed in script, f"the marked example lost {needed!r}"


def test_the_testing_example_works_as_typed(tmp_path, db_url):
    app = tmp_path / "app"
    (app / "tests").mkdir(parents=True)
    env = clean_env(CAIRN_DATABASE_URL=db_url, CAIRN_HOME=str(tmp_path / ".cairn-home"),
                    PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    ran = run_in_own_group(readme_script(README.read_text(), "testing"), app, env, TIMEOUT * 2)
    assert ran.returncode == 0, f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    runs = [line for line in ran.stdout.splitlines() if line.startswith("=") and " in " in line]
    assert len(runs) == 2, ran.stdout
    assert "1 passed, 1 deselected" in runs[0], ran.stdout
    assert "2 passed" in runs[1], ran.stdout
    history = (app / "tests" / "histories" / "greeting.json").read_text()
    assert '"workflow_type": "greeting"' in history
    # The guard holds: a changed workflow no longer replays the recorded history.
    test_file = app / "tests" / "test_greeting.py"
    call = "    return await workflow.execute_activity(greet, name,"
    assert call in test_file.read_text()
    test_file.write_text(test_file.read_text().replace(call, "    await workflow.sleep(1)\n" + call))
    again = run_in_own_group("pytest tests/test_greeting.py -k replays", app, env, TIMEOUT * 2)
    assert again.returncode == 1, again.stdout
    assert "NonDeterminismError" in again.stdout, again.stdout
