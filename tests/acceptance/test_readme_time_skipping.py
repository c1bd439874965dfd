"""The README's "Testing with time skipping" typed in as written: the blocks after a
``<!-- timeskip: ... -->`` comment run in one bash session, in an application directory
holding only ``tests/``, with this venv first on PATH and ``CAIRN_DATABASE_URL`` naming a
fresh, migrated database. Its two tests skip 90 and 31 days of workflow time."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support import TIMEOUT, clean_env
from support.readme import README, readme_script, run_in_own_group

pytestmark = pytest.mark.acceptance

VENV_BIN = Path(sys.executable).parent


def test_the_readme_marks_the_time_skipping_example():
    script = readme_script(README.read_text(), "timeskip")
    for needed in ("cat > tests/test_reminder.py", "WorkflowEnvironment.start_time_skipping()",
                   '@activity.defn(name="send_email")', "env.auto_time_skipping_disabled()",
                   "pytest tests/test_reminder.py\n"):
        assert needed in script, f"the marked example lost {needed!r}"


def test_the_time_skipping_example_works_as_typed(tmp_path, db_url, sql):
    app = tmp_path / "app"
    (app / "tests").mkdir(parents=True)
    env = clean_env(CAIRN_DATABASE_URL=db_url, CAIRN_HOME=str(tmp_path / ".cairn-home"),
                    PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    ran = run_in_own_group(readme_script(README.read_text(), "timeskip"), app, env, TIMEOUT * 2)
    assert ran.returncode == 0, f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    assert "2 passed" in ran.stdout, ran.stdout
    # Both runs completed, each after its sleep in workflow time (the timer's fire_at is
    # 90 and 30 days after the run's start).
    rows = sql("SELECT r.workflow_id, r.status, (h.data ->> 'fire_at')::timestamptz - r.created_at "
               "FROM cairn.runs r JOIN cairn.history h ON h.run_id = r.run_id AND h.type = 'TimerStarted' "
               "ORDER BY r.workflow_id")
    assert [(w, s, d.days) for w, s, d in rows] == [("reminder-30", "completed", 30), ("reminder-90", "completed", 90)]
