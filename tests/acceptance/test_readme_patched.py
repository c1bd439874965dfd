"""The README's "Changing workflow code: workflow.patched" typed in as written (the blocks
marked ``patched``): a run of the old code replays with the guarded new code; the same
change unguarded does not, as the README says."""

from __future__ import annotations

import subprocess

import pytest

from support import CAIRN, TIMEOUT, clean_env
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_patched_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("patched", tmp_path, db_url, TIMEOUT * 2)
    assert "OK: 9 events of order-o-1 replay with the current code" in ran.stdout
    activities = sql("SELECT r.workflow_id, h.data ->> 'activity_type' FROM cairn.history h "
                     "JOIN cairn.runs r USING (run_id) WHERE h.type = 'ActivityScheduled' "
                     "ORDER BY r.workflow_id, h.seq")
    assert activities == [("order-o-1", "charge"), ("order-o-1", "ship"),
                          ("order-o-2", "charge"), ("order-o-2", "send_receipt"), ("order-o-2", "ship")]
    # The README's claim about the unguarded change.
    guarded = (tmp_path / "orders.py").read_text()
    unguarded = guarded.replace('if workflow.patched("send-receipt"):', "if True:")
    assert unguarded != guarded
    (tmp_path / "unguarded.py").write_text(unguarded)
    diverged = subprocess.run([CAIRN, "--database-url", db_url, "replay", "order-o-1.json", "-m", "unguarded"],
                              cwd=tmp_path, env=clean_env(PYTHONPATH=str(tmp_path)), capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    assert diverged.returncode == 1
    assert ("DIVERGED: non-deterministic workflow at seq 6: history has ActivityScheduled(activity_type='ship'), "
            "the code produced ActivityScheduled(activity_type='send_receipt')") in diverged.stdout + diverged.stderr
