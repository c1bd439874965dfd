"""The README's schedules example, run as typed (the blocks marked ``schedules``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from support import TIMEOUT, clean_env, query
from support.readme import README, readme_script, run_in_own_group

pytestmark = pytest.mark.acceptance

VENV_BIN = Path(sys.executable).parent


def test_the_schedules_example_works_as_typed(tmp_path, db_url):
    env = clean_env(CAIRN_DATABASE_URL=db_url, CAIRN_HOME=str(tmp_path / ".cairn-home"),
                    PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(tmp_path))
    env.pop("VIRTUAL_ENV", None)
    ran = run_in_own_group(readme_script(README.read_text(), "schedules"), tmp_path, env, TIMEOUT * 2)
    assert ran.returncode == 0, f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    assert "last: report-" in ran.stdout
    assert "schedule reports: nightly_report on queue default" in ran.stdout
    listed = json.loads(ran.stdout[ran.stdout.index("[\n"):ran.stdout.index("\n]") + 2])
    assert listed[0]["paused"] is True
    assert listed[0]["note"] == "database maintenance"
    assert "backfilled reports: 5 slot(s) acted on" in ran.stdout  # 00:00, :02, :04, :06, :08
    assert '"report for ops"' in ran.stdout  # the delayed start's result
    # The trigger's run and the every-2-seconds runs, each once.
    runs = query(db_url, "SELECT workflow_id, status FROM cairn.runs WHERE workflow_id LIKE 'report-%%'")
    assert len(runs) >= 3
    assert len({w for w, _ in runs}) == len(runs)
