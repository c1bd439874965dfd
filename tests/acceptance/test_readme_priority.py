"""The README's priority, fairness and limits example, run as typed (the blocks marked
``priority``)."""

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


def test_the_priority_example_works_as_typed(tmp_path, db_url):
    env = clean_env(CAIRN_DATABASE_URL=db_url, CAIRN_HOME=str(tmp_path / ".cairn-home"),
                    PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(tmp_path))
    env.pop("VIRTUAL_ENV", None)
    ran = run_in_own_group(readme_script(README.read_text(), "priority"), tmp_path, env, TIMEOUT * 2)
    assert ran.returncode == 0, f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    assert "['exported c0', 'exported c1', 'exported c2', 'exported c3']" in ran.stdout
    assert "fairness key tenant-b (weight 2)" in ran.stdout  # describe
    listed = json.loads(ran.stdout[ran.stdout.index("[\n"):ran.stdout.index("\n]") + 2])
    assert [(x["kind"], x["max_running"], x["in_use"]) for x in listed] == [("workflow", 2, 0)]
    # Two of the key's runs at most were open and started at once: the later ones started
    # (their first workflow task) only after an earlier one closed.
    rows = query(db_url, """SELECT r.created_at, r.closed_at, h.at FROM cairn.runs r
                            JOIN cairn.history h ON h.run_id = r.run_id AND h.seq = 2
                            WHERE r.concurrency_key = 'customer-42'""")
    assert len(rows) == 5
    for _, _, began in rows:
        assert sum(1 for _, closed, b in rows if b <= began < closed) <= 2
    assert query(db_url, "SELECT count(*) FROM cairn.concurrency_limits") == [(1,)]  # crm-api's, kept
