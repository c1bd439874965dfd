"""`cairn start --search-attribute/--memo`, `cairn list --where`, `cairn reset`, `cairn retry`
through click (in process), against a real database and a real worker."""

from __future__ import annotations

import asyncio
import contextlib
import json

from cairn import Client, WorkflowFailure
from support import bad_input, cairn, events, ok, running_worker

from .test_reset_retry import _charge_broken, charge, order, prepare, task_before


def drive(db_url: str, workflow_id: str) -> str:
    """Runs a worker until the newest run of the id closes; returns its status."""

    async def go() -> str:
        async with running_worker(db_url, workflows=[order], activities=[prepare, charge]):
            client = await Client.connect(db_url)
            try:
                with contextlib.suppress(WorkflowFailure):
                    await client.get_handle(workflow_id).result(timeout=20)
                return (await client.get_handle(workflow_id).describe()).status
            finally:
                await client.close()

    return asyncio.run(go())


def test_operator_commands(db_url, sql):
    _charge_broken["on"] = True
    asyncio.run(_register(db_url))
    out = json.loads(ok(cairn(db_url, "start", "order", "--input", "21", "--id", "cli-1",
                               "--search-attribute", "customer=acme", "--search-attribute", "amount=12.5",
                               "--search-attribute", 'vip=true', "--search-attribute", 'tags=["a", "b"]',
                               "--memo", '{"ticket": "T-1"}', "--json")))
    first = out["run_id"]
    assert sql("SELECT search_attributes, memo FROM cairn.runs WHERE run_id = %s", (first,)) == [
        ({"customer": "acme", "amount": 12.5, "vip": True, "tags": ["a", "b"]}, {"ticket": "T-1"})]
    assert drive(db_url, "cli-1") == "failed"

    # list --where
    rows = json.loads(ok(cairn(db_url, "list", "--where", 'customer = "acme" AND amount > 10 AND tags = "b"',
                               "--json")))["runs"]
    assert [r["run_id"] for r in rows] == [first]
    assert rows[0]["search_attributes"]["vip"] is True
    assert "cli-1" in ok(cairn(db_url, "list", "--where", "Status = 'failed' AND vip = true"))
    assert ok(cairn(db_url, "list", "--where", "amount > 100")).strip() == "no runs"
    bad_input(cairn(db_url, "list", "--where", 'customer = "acme" DROP TABLE cairn.runs'),
              "unexpected token 'DROP' at column 19")
    bad_input(cairn(db_url, "list", "--where", "customer = 'acme"), "unterminated string", "column 12")
    bad_input(cairn(db_url, "list", "--where", "amount =~ 3"), "unexpected character '~' at column 9")
    bad_input(cairn(db_url, "list", "--where", "amount > 3 )"), "unexpected token ')' at column 12")
    assert ok(cairn(db_url, "list", "--where", "customer = \"'; DROP TABLE cairn.runs; --\"")).strip() == "no runs"
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]

    # reset: bad input first (exit 2, nothing written)
    old_events = events(sql, first)
    markers = [s for s, t, _ in old_events if t == "WorkflowTaskStarted"]
    bad_input(cairn(db_url, "reset", "cli-1", "--to-seq", "3"),
              "seq 3 does not start a workflow task", f"valid seqs: {', '.join(map(str, markers))}")
    bad_input(cairn(db_url, "reset", "cli-1"), "exactly one of --to-seq N and --to-last-task")
    bad_input(cairn(db_url, "reset", "cli-1", "--to-seq", "2", "--to-last-task"), "exactly one")
    bad_input(cairn(db_url, "reset", "no-such-id", "--to-last-task"), "no workflow run")
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]

    # reset after fixing the activity: the new run completes
    _charge_broken["on"] = False
    n = task_before(old_events, "charge")
    out = json.loads(ok(cairn(db_url, "reset", "cli-1", "--to-seq", str(n), "--reason", "card fixed", "--json")))
    assert out["reset_from"] == {"kind": "reset", "run_id": first, "seq": n, "reason": "card fixed"}
    second = out["run_id"]
    assert drive(db_url, "cli-1") == "completed"
    described = ok(cairn(db_url, "describe", "cli-1"))
    assert f"reset of run {first} at seq {n}: card fixed" in described
    assert '"customer": "acme"' in described
    assert 'memo      {"ticket": "T-1"}' in described

    # retry refuses a completed run (the newest) and a running one
    bad_input(cairn(db_url, "retry", "cli-1"), "is completed")
    # --to-last-task on the old failed run re-delivers the failure: the new run fails the same way
    out = json.loads(ok(cairn(db_url, "reset", "cli-1", "--run-id", first, "--to-last-task",
                              "--no-reapply-signals", "--json")))
    assert out["reset_from"]["seq"] == markers[-1]
    assert drive(db_url, "cli-1") == "failed"
    third = out["run_id"]
    assert [t for _, t, _ in events(sql, third)][-3:] == ["WorkflowTaskStarted", "ActivityFailed", "WorkflowFailed"]

    # retry the failed run from its input: it completes (prepare and charge run again)
    text = ok(cairn(db_url, "retry", "cli-1"))
    assert f"retried cli-1 (run {third})" in text
    assert drive(db_url, "cli-1") == "completed"
    fourth = sql("SELECT run_id::text FROM cairn.runs WHERE workflow_id = 'cli-1' ORDER BY run_id DESC LIMIT 1")[0][0]
    assert [d["activity_type"] for _, t, d in events(sql, fourth) if t == "ActivityScheduled"] == ["prepare", "charge"]
    assert sql("SELECT status FROM cairn.runs WHERE workflow_id = 'cli-1' ORDER BY run_id") == [
        ("failed",), ("completed",), ("failed",), ("completed",)]
    lineage = sql("SELECT run_id::text FROM cairn.runs WHERE reset_from IS NOT NULL")
    assert {second, third, fourth} == {r for (r,) in lineage}


def test_bad_start_options(db_url, sql):
    asyncio.run(_register(db_url))
    bad_input(cairn(db_url, "start", "order", "--input", "1", "--search-attribute", "nokey"), "KEY=JSON")
    bad_input(cairn(db_url, "start", "order", "--input", "1", "--search-attribute", "Status=1"), "reserved")
    bad_input(cairn(db_url, "start", "order", "--input", "1", "--search-attribute", "k={\"a\": 1}"), "type dict")
    bad_input(cairn(db_url, "start", "order", "--input", "1", "--search-attribute", "k=1",
                    "--search-attribute", "k=2"), "given twice")
    bad_input(cairn(db_url, "start", "order", "--input", "1", "--memo", "[1]"), "JSON object")
    bad_input(cairn(db_url, "start", "order", "--input", "1", "--memo", "{bad"), "--memo is not valid JSON")
    bad_input(cairn(db_url, "retry", "nothing-here"), "no workflow run")
    assert sql("SELECT count(*) FROM cairn.runs") == [(0,)]
    # A running run cannot be retried.
    ok(cairn(db_url, "start", "order", "--input", "1", "--id", "cli-run"))
    bad_input(cairn(db_url, "retry", "cli-run"), "is running")


async def _register(db_url: str) -> None:
    async with running_worker(db_url, workflows=[order], activities=[prepare, charge]):
        pass
