"""The run-lifecycle options of ``cairn start``, ``list --status`` and ``describe`` through
the real entry point, against real worker processes."""

from __future__ import annotations

import json

import pytest
from acceptance_support import cairn_cli

from support import query, wait_for

pytestmark = pytest.mark.acceptance


def runs_count(db_url: str) -> int:
    return int(query(db_url, "SELECT count(*) FROM cairn.runs")[0][0])


@pytest.mark.parametrize(("args", "fragment"), [
    (("--id-reuse-policy", "sometimes"), "--id-reuse-policy"),
    (("--execution-timeout", "0"), "--execution-timeout"),
    (("--execution-timeout", "-3"), "--execution-timeout"),
    (("--execution-timeout", "soon"), "--execution-timeout"),
    (("--execution-timeout", "1e12"), "execution_timeout"),
])
def test_start_rejects_bad_lifecycle_options(db_url, args, fragment):
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "1", "--id", "bad", *args, db_url=db_url)
    assert ran.code == 2, ran.err
    assert fragment in ran.err
    assert "Traceback" not in ran.err
    assert runs_count(db_url) == 0


def test_execution_timeout_and_list_status(workers, db_url):
    workers("w")
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "600", "--id", "late", "--execution-timeout", "1",
                    "--wait", "--json", db_url=db_url)
    assert ran.code == 1, ran.err
    out = json.loads(ran.out)
    assert out["status"] == "failed"
    assert out["failure"]["type"] == "WorkflowTimedOut"
    assert query(db_url, "SELECT status FROM cairn.runs WHERE workflow_id = 'late'") == [("timed_out",)]
    ran = cairn_cli("list", "--status", "timed_out", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    assert [r["workflow_id"] for r in json.loads(ran.out)["runs"]] == ["late"]
    ran = cairn_cli("list", "--status", "continued_as_new", "--json", db_url=db_url)
    assert json.loads(ran.out)["runs"] == []
    ran = cairn_cli("list", "--status", "sleeping", db_url=db_url)
    assert ran.code == 2


def test_id_reuse_policy(workers, db_url):
    workers("w")
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "0.01", "--id", "once", "--wait", db_url=db_url)
    assert ran.code == 0, ran.err
    before = runs_count(db_url)
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "0.01", "--id", "once",
                    "--id-reuse-policy", "reject_duplicate", db_url=db_url)
    assert ran.code == 1
    assert "may not be reused" in ran.err
    assert "completed" in ran.err
    assert runs_count(db_url) == before
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "0.01", "--id", "once",
                    "--id-reuse-policy", "allow_duplicate", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    assert runs_count(db_url) == before + 1


def test_describe_shows_children_and_chains(workers, db_url):
    workers("w", "-m", "lifecycle_flows")
    ran = cairn_cli("start", "nest", "-m", "lifecycle_flows", "--input", "0.05", "--id", "nest-1", "--wait",
                    db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == "woke"
    ran = cairn_cli("describe", "nest-1", "--json", db_url=db_url)
    d = json.loads(ran.out)
    assert [(c["workflow_id"], c["status"]) for c in d["children"]] == [("nested-child", "completed")]
    ran = cairn_cli("describe", "nest-1", db_url=db_url)
    assert "children:" in ran.out
    assert "nested-child" in ran.out
    ran = cairn_cli("describe", "nested-child", db_url=db_url)
    assert "parent    nest-1" in ran.out

    # start --wait follows a continue-as-new chain to its last run's result.
    ran = cairn_cli("start", "relay", "-m", "lifecycle_flows", "--input", "2", "--id", "relay-1", "--wait",
                    db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == 0
    wait_for("the chain", lambda: query(
        db_url, "SELECT count(*) FROM cairn.runs WHERE workflow_id = 'relay-1'")[0][0] == 3)
    ran = cairn_cli("describe", "relay-1", db_url=db_url)
    assert "continued from run" in ran.out
    ran = cairn_cli("list", "--status", "continued_as_new", "--json", db_url=db_url)
    assert [r["workflow_id"] for r in json.loads(ran.out)["runs"]] == ["relay-1", "relay-1"]
