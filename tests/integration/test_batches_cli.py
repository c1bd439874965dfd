"""Batch operations on the command line: `cairn terminate|cancel|signal|reset|retry --where`,
`--dry-run`, `--yes`, `--json`, progress and summary, `cairn batch list|describe|cancel|wait`,
the single-run forms unchanged, and a signal batch whose CLI process is killed (-9) mid-chunk
and resumed by a worker: each run receives the signal exactly once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap

import psycopg

from cairn import Client
from support import CAIRN, bad_input, cairn_in_thread, clean_env, ok, spawn_worker, wait_for

from .test_batches import _count_events, _nothing_written, _start

cli = cairn_in_thread


async def test_dry_run_and_json_shapes(client, db_url, sql):
    runs = await _start(client, 4, "a")
    await client.get_handle("a-0").terminate()
    out = ok(await cli(db_url, "terminate", "--where", "group = 'a'", "--dry-run"))
    assert "terminate would act on 4 runs matching \"group = 'a'\" (3 running, 1 terminated)" in out
    assert "1 of them are closed and would be skipped" in out
    assert runs[0] in out
    assert "a-3" in out
    dry = json.loads(ok(await cli(db_url, "terminate", "--where", "group = 'a'", "--dry-run", "--json")))
    assert dry == {"kind": "terminate", "filter": "group = 'a'", "matched": 4,
                   "by_status": {"running": 3, "terminated": 1}, "dry_run": True,
                   "sample": [{"workflow_id": f"a-{i}", "run_id": r, "status": "terminated" if i == 0 else "running"}
                              for i, r in enumerate(runs)]}
    _nothing_written(sql)

    # without --yes off a terminal: refused, nothing written
    bad_input(await cli(db_url, "terminate", "--where", "group = 'a'"), "terminate of 4 runs: add --yes")
    _nothing_written(sql)

    ran = await cli(db_url, "terminate", "--where", "group = 'a'", "--reason", "cleanup", "--yes",
                    "--chunk-size", "2")
    out = ok(ran)
    assert "4 matched, 3 done, 1 skipped, 0 failed" in out
    assert "skipped 1: already terminated (e.g. a-0)" in out
    assert "batch " in ran.stderr
    assert "terminate: 4/4 (100%): done 3, skipped 1, failed 0" in ran.stderr
    for r in runs:
        assert _count_events(sql, r, "WorkflowTerminated") == 1

    d = json.loads(ok(await cli(db_url, "cancel", "--where", "group = 'a'", "--yes", "--json")))
    assert {k: d[k] for k in ("kind", "status", "matched", "done", "skipped", "failed", "pending")} == {
        "kind": "cancel", "status": "completed", "matched": 4, "done": 0, "skipped": 4, "failed": 0, "pending": 0}
    assert d["outcomes"] == [{"outcome": "skipped", "detail": "already terminated", "count": 4,
                              "workflow_ids": ["a-0", "a-1", "a-2"]}]
    assert set(d) >= {"id", "filter", "params", "executor", "executing", "created_at", "finished_at", "error"}

    listed = json.loads(ok(await cli(db_url, "batch", "list", "--json")))["batches"]
    assert [b["kind"] for b in listed] == ["cancel", "terminate"]
    text = ok(await cli(db_url, "batch", "list"))
    assert "terminate  completed" in text
    assert "3/1/0/4" in text
    described = ok(await cli(db_url, "batch", "describe", listed[1]["id"]))
    assert "status    completed" in described
    assert "reason=cleanup" in described
    assert "skipped  1     already terminated  a-0" in described
    assert json.loads(ok(await cli(db_url, "batch", "describe", listed[1]["id"], "--json")))["done"] == 3
    nothing = ok(await cli(db_url, "terminate", "--where", "group = 'zzz'", "--yes"))
    assert nothing.strip() == "no runs match: nothing to do"


async def test_usage_and_bad_input(client, db_url, sql):
    await _start(client, 1, "a")
    for args, message in [
        (["terminate"], "give a WORKFLOW_ID, or --where"),
        (["terminate", "a-0", "--where", "group = 'a'"], "give a WORKFLOW_ID, or --where"),
        (["cancel", "--where", "group = 'a'", "--run-id", "x"], "--run-id names one run"),
        (["terminate", "a-0", "--dry-run"], "go with --where"),
        (["reset", "--where", "group = 'a'", "--yes"], "exactly one of --to-seq N, --to-first-task"),
        (["reset", "a-0", "--to-first-task"], "--to-first-task goes with --where"),
        (["signal", "--where", "group = 'a'"], "missing the signal NAME"),
        (["signal", "a-0", "go", "--where", "group = 'a'"], "give only the signal NAME"),
    ]:
        ran = await cli(db_url, *args)
        assert ran.exit_code == 2, (args, ran.stderr)
        assert message in ran.stderr, (args, ran.stderr)
    bad_input(await cli(db_url, "terminate", "--where", "group = 'a", "--yes"), "unterminated string")
    bad_input(await cli(db_url, "signal", "--where", "group = 'a'", "go", "--input", "{nope", "--yes"),
              "not valid JSON")
    bad_input(await cli(db_url, "retry", "--where", "Bogus > ", "--dry-run"), "column")
    bad_input(await cli(db_url, "batch", "describe", "nope"), "is not a batch id")
    bad_input(await cli(db_url, "batch", "cancel", "0190f0f0-0000-7000-8000-000000000000"), "no batch")
    _nothing_written(sql)
    # the single-run forms are as they were
    assert ok(await cli(db_url, "cancel", "a-0")).strip() == "cancel requested for a-0"
    single = json.loads(ok(await cli(db_url, "terminate", "a-0", "--json")))
    assert single == {"workflow_id": "a-0", "terminated": True}
    bad_input(await cli(db_url, "terminate", "a-0"), "closed")
    _nothing_written(sql)


async def test_signal_detach_wait_and_cancel(client, db_url, sql):
    runs = await _start(client, 3, "a")
    batch_id = ok(await cli(db_url, "signal", "--where", "group = 'a'", "go", "--input", '{"k": 1}', "--yes",
                        "--detach")).strip()
    assert sql("SELECT status, done FROM cairn.batches") == [("running", 0)]
    out = ok(await cli(db_url, "batch", "wait", batch_id))
    assert f"batch {batch_id} (signal) completed: 3 matched, 3 done" in out
    for r in runs:
        assert _count_events(sql, r, "SignalReceived") == 1

    other = ok(await cli(db_url, "terminate", "--where", "group = 'a'", "--yes", "--detach")).strip()
    assert ok(await cli(db_url, "batch", "cancel", other)).strip() == f"batch {other} cancelled"
    assert json.loads(ok(await cli(db_url, "batch", "cancel", other, "--json"))) == {"batch_id": other,
                                                                                "status": "cancelled"}
    ran = await cli(db_url, "batch", "wait", other)
    assert ran.exit_code == 1
    assert "cancelled: 3 matched, 0 done, 0 skipped, 0 failed, 3 not reached" in ran.stdout
    assert sql("SELECT count(*) FROM cairn.runs WHERE status = 'running'") == [(3,)]


async def test_reset_and_retry_on_the_command_line(client, db_url, sql):
    await _start(client, 2, "a")
    ok(await cli(db_url, "terminate", "--where", "group = 'a'", "--yes"))
    ran = await cli(db_url, "retry", "--where", "group = 'a'", "--yes", "--json")
    d = json.loads(ok(ran))
    assert (d["kind"], d["done"]) == ("retry", 2)
    # no workflow task ran: a reset has nothing to go back to, and says so per run
    ran = await cli(db_url, "reset", "--where", "group = 'a' AND Status = 'running'", "--to-first-task",
                    "--yes")
    assert ran.exit_code == 1
    assert "2 matched, 0 done, 0 skipped, 2 failed" in ran.stdout
    assert "failed 2: the run has no workflow task yet: there is nothing to reset to" in ran.stdout


WORKFLOWS = textwrap.dedent('''
    from cairn import workflow

    @workflow.defn
    async def waiter(tag: str) -> str:
        got = await workflow.wait_signal("go")
        return f"{tag}:{got}"
''')


async def _start_runs(db_url: str, n: int, group: str) -> list[str]:
    async with await Client.connect(db_url) as c:
        return await _start(c, n, group)


def test_signal_batch_survives_kill9_of_its_cli(db_url, sql, tmp_path):
    """The CLI executing a signal batch is killed while a chunk is half written (it waits on
    a run's task lock the test holds); a worker resumes the batch: every run is signalled
    once, the killed chunk's signals included."""
    (tmp_path / "batch_flows.py").write_text(WORKFLOWS)
    n, chunk = 20, 5
    runs = asyncio.run(_start_runs(db_url, n, "k"))
    blocker_run = sorted(runs)[2 * chunk + 1]  # the second run of the third chunk
    log = tmp_path / "cli.log"
    with psycopg.connect(db_url) as blocker:  # holds that run's workflow-task row lock
        blocker.execute("SELECT 1 FROM cairn.workflow_tasks WHERE run_id = %s FOR UPDATE", (blocker_run,))
        with open(log, "wb") as out:
            proc = subprocess.Popen([CAIRN, "--database-url", db_url, "signal", "--where", "group = 'k'", "go",
                                     "--input", '"x"', "--yes", "--chunk-size", str(chunk)],
                                    stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        try:
            wait_for("the CLI's third chunk to wait on the held lock", lambda: sql(
                "SELECT (SELECT done FROM cairn.batches) = %s AND EXISTS (SELECT 1 FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock')", (2 * chunk,)) == [(True,)]
                or proc.poll() is not None)
            assert proc.poll() is None, log.read_text()
            proc.kill()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        # the third chunk wrote its first run's signal, uncommitted: nobody sees it
        assert sum(_count_events(sql, r, "SignalReceived") for r in runs) == 2 * chunk
        blocker.rollback()
    assert sql("SELECT status, done FROM cairn.batches") == [("running", 2 * chunk)]

    worker = spawn_worker("resumer", db_url, "batch_flows", cwd=tmp_path, log_path=tmp_path / "worker.log",
                          options=["--queue", "batches"])
    try:
        worker.wait_started()
        wait_for("the worker to finish the batch", lambda: sql("SELECT status FROM cairn.batches") == [("completed",)],
                 procs=(worker,))
        wait_for("every run to complete", lambda: sql(
            "SELECT count(*) FROM cairn.runs WHERE status = 'completed'") == [(n,)], procs=(worker,))
    finally:
        worker.proc.terminate()
        worker.proc.wait(timeout=30)
    assert sql("SELECT matched, done, skipped, failed, executor LIKE '%%(worker)' FROM cairn.batches") == [
        (n, n, 0, 0, True)]
    for r in runs:
        assert _count_events(sql, r, "SignalReceived") == 1, r
    results = sql("SELECT r.workflow_id, h.data->'result' FROM cairn.runs r JOIN cairn.history h USING (run_id) "
                  "WHERE h.type = 'WorkflowCompleted' ORDER BY r.workflow_id")
    assert sorted(results) == sorted((f"k-{i}", f"t{i}:x") for i in range(n))
