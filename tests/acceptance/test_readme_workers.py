"""The README's "Seeing the workers" typed in as written (the blocks marked ``workers``): a
worker seen live, stopped by SIGTERM, a run nobody serves said so, and a second worker
taking it, against a fresh database."""

from __future__ import annotations

import json

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_workers_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("workers", tmp_path, db_url, TIMEOUT * 2)
    out = ran.stdout
    assert '"shipped parcel o-17"' in out
    # `cairn workers --json` listed the one live worker with its queue and types.
    (listed,) = json.loads(out[out.index("[\n"):out.index("\n]") + 2])
    assert (listed["identity"], listed["status"], listed["queues"]) == ("web-1", "live", ["default"])
    assert (listed["workflow_types"], listed["activity_types"]) == (["fulfil_order"], ["pack"])
    # After SIGTERM: stopped, in --all; order-18 said unserved, naming web-1, at start and in describe.
    stopped = out[out.index("IDENTITY", out.index("\n]")):out.index("started fulfil_order as order-18")]
    assert [line.split()[:2] for line in stopped.splitlines()[1:]] == [["web-1", "stopped"]]
    unserved = "no live worker serves workflow type 'fulfil_order' on queue 'default' (last served by worker 'web-1'"
    assert unserved in ran.stderr  # cairn start's warning
    assert f"{unserved} at " in out  # cairn describe
    assert "): it waits for one" in out
    # list_workers.py: order-18 done by web-2, then both workers.
    assert "shipped parcel o-18" in out
    assert "web-2 live ['default'] ['fulfil_order'] ['pack']" in out
    assert "web-1 stopped ['default'] ['fulfil_order'] ['pack']" in out
    assert ("web-1",) in sql("SELECT identity FROM cairn.workers WHERE stopped_at IS NOT NULL")
