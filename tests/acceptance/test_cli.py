"""Every ``cairn`` command through the real entry point (subprocesses), against a real
database and real worker processes: exit codes, output, and what lands in the database."""

from __future__ import annotations

import asyncio
import json
import textwrap

import flows
import pytest
from acceptance_support import cairn_cli, history, run_status, start_runs

from cairn import Worker
from cairn.store import db
from support import clean_env, query, wait_for

pytestmark = pytest.mark.acceptance

ADA = '{"name": "Ada", "age": 36}'
RUN_ID = "01a20306-11ac-7549-ba41-ce5c4352f885"
# Every migration this version ships (more are added as features land).
ALL_VERSIONS = [m.version for m in db.migrations()]


def runs_count(db_url: str) -> int:
    return int(query(db_url, "SELECT count(*) FROM cairn.runs")[0][0])


def assert_clean_error(ran, code: int, *fragments: str) -> None:
    """Exit ``code``, an ``error: ...`` message on stderr, no traceback."""
    assert ran.code == code, f"exit {ran.code}, want {code}\nstdout: {ran.out}\nstderr: {ran.err}"
    assert "Traceback" not in ran.err + ran.out, ran.err
    assert ran.err.strip(), "no message on stderr"
    for fragment in fragments:
        assert fragment in ran.err, f"{fragment!r} not in stderr: {ran.err}"


def register_types(db_url: str) -> None:
    """Fills the workflow-type registry as a worker does when it starts (in-process)."""

    async def go() -> None:
        async with Worker(db_url, workflows=[flows.greet, flows.sleeper, flows.doomed],
                          activities=[flows.hello], poll_interval=0.2):
            pass

    asyncio.run(go())


# ---------------------------------------------------------------- db migrate / status


def test_db_migrate_and_status(empty_db_url):

    url = empty_db_url
    ran = cairn_cli("db", "status", "--json", db_url=url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == {"applied": [], "pending": ALL_VERSIONS, "changed": [], "up_to_date": False}
    ran = cairn_cli("db", "status", db_url=url)
    assert ran.code == 0
    assert "pending: 0001" in ran.out
    assert "cairn db migrate" in ran.out

    # Commands that need the schema say so, without a traceback.
    ran = cairn_cli("list", db_url=url)
    assert_clean_error(ran, 1, "cairn db migrate")
    ran = cairn_cli("worker", "-m", "flows", db_url=url)
    assert_clean_error(ran, 1, "cairn db migrate")
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "1", db_url=url)
    assert_clean_error(ran, 1, "cairn db migrate")

    ran = cairn_cli("db", "migrate", "--json", db_url=url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == {"applied": ALL_VERSIONS}
    ran = cairn_cli("db", "migrate", db_url=url)
    assert ran.code == 0, ran.err
    assert "up to date" in ran.out
    ran = cairn_cli("db", "migrate", "--json", db_url=url)
    assert json.loads(ran.out) == {"applied": []}

    ran = cairn_cli("db", "status", "--json", db_url=url)
    assert json.loads(ran.out) == {"applied": ALL_VERSIONS, "pending": [], "changed": [], "up_to_date": True}
    ran = cairn_cli("db", "status", db_url=url)
    assert "applied: 0001" in ran.out
    assert "up to date" in ran.out
    assert query(url, "SELECT count(*) FROM cairn.runs") == [(0,)]
    ran = cairn_cli("list", db_url=url)
    assert ran.code == 0
    assert "no runs" in ran.out


# ---------------------------------------------------------------- a run's life


def test_start_wait_list_describe_history_replay(workers, db_url, tmp_path):
    workers("w")
    # --input JSON, --id, --wait: the result on stdout, the start notice on stderr.
    ran = cairn_cli("start", "greet", "--input", ADA, "--id", "g1", "--wait", db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out) == "hello Ada, 36"
    assert "started greet as g1" in ran.err

    # --input @file, --json with --wait.
    (tmp_path / "bob.json").write_text('{"name": "Bob", "age": 7}')
    ran = cairn_cli("start", "greet", "--input", f"@{tmp_path / 'bob.json'}", "--id", "g2", "--wait",
                    "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    out = json.loads(ran.out)
    assert out["workflow_id"] == "g2"
    assert out["status"] == "completed"
    assert out["result"] == "hello Bob, 7"
    assert out["run_id"] == query(db_url, "SELECT run_id::text FROM cairn.runs WHERE workflow_id = 'g2'")[0][0]

    # Without --wait: returns at once; --json gives the ids.
    ran = cairn_cli("start", "greet", "--input", '{"name": "Cy", "age": 1}', "--id", "g3", "--json",
                    db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["workflow_id"] == "g3"
    ran = cairn_cli("start", "sleeper", "--input", "600", "--id", "s1", db_url=db_url)
    assert ran.code == 0, ran.err
    assert ran.out.startswith("started sleeper as s1 (run ")
    wait_for("g3 to complete", lambda: run_status(db_url, "g3") == "completed")

    # list: filters and --json.
    ran = cairn_cli("list", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    listing = json.loads(ran.out)
    assert [r["workflow_id"] for r in listing["runs"]] == ["s1", "g3", "g2", "g1"]  # newest first
    assert (listing["total"], listing["next_page_token"]) == (4, None)
    ran = cairn_cli("list", "--status", "completed", "--json", db_url=db_url)
    assert sorted(r["workflow_id"] for r in json.loads(ran.out)["runs"]) == ["g1", "g2", "g3"]
    ran = cairn_cli("list", "--status", "running", "--json", db_url=db_url)
    assert [(r["workflow_id"], r["workflow_type"]) for r in json.loads(ran.out)["runs"]] == [("s1", "sleeper")]
    ran = cairn_cli("list", "--type", "sleeper", db_url=db_url)
    assert ran.code == 0
    lines = ran.out.strip().splitlines()
    assert lines[0].split()[:3] == ["WORKFLOW", "ID", "TYPE"]
    assert len(lines) == 2
    assert lines[1].split()[:3] == ["s1", "sleeper", "running"]
    ran = cairn_cli("list", "--type", "nope", db_url=db_url)
    assert ran.code == 0
    assert "no runs" in ran.out
    ran = cairn_cli("list", "--limit", "2", "--json", db_url=db_url)
    assert len(json.loads(ran.out)["runs"]) == 2

    # describe: human and --json.
    ran = cairn_cli("describe", "g1", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    d = json.loads(ran.out)
    assert (d["workflow_id"], d["workflow_type"], d["status"], d["queue"]) == ("g1", "greet", "completed",
                                                                              "default")
    assert d["history_length"] == len(history(db_url, "g1"))
    assert d["pending_activities"] == []
    assert d["closed_at"]
    ran = cairn_cli("describe", "g1", db_url=db_url)
    assert "status    completed" in ran.out
    assert "type      greet" in ran.out
    wait_for("s1's timer", lambda: any(t == "TimerStarted" for _, t, _, _ in history(db_url, "s1")))
    ran = cairn_cli("describe", "s1", "--json", db_url=db_url)
    d = json.loads(ran.out)
    assert d["status"] == "running"
    assert len(d["pending_timers"]) == 1
    ran = cairn_cli("describe", "s1", db_url=db_url)
    assert "timers:" in ran.out
    assert "FIRES AT" in ran.out

    # history: a readable table ...
    ran = cairn_cli("history", "g1", db_url=db_url)
    assert ran.code == 0, ran.err
    lines = ran.out.strip().splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "EVENT", "DETAILS"]
    events = [line.split()[2] for line in lines[1:]]
    assert events == [t for _, t, _, _ in history(db_url, "g1")]
    assert events[0] == "WorkflowStarted"
    assert events[-1] == "WorkflowCompleted"
    assert "hello Ada, 36" in ran.out
    # ... and --json, which replay accepts as a file.
    ran = cairn_cli("history", "g1", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    doc = json.loads(ran.out)
    assert doc["workflow_id"] == "g1"
    assert doc["workflow_type"] == "greet"
    assert doc["status"] == "completed"
    assert [e["seq"] for e in doc["events"]] == list(range(1, len(events) + 1))
    hist_file = tmp_path / "g1.json"
    hist_file.write_text(ran.out)

    # replay, from the file (no database needed) and by id.
    ran = cairn_cli("replay", str(hist_file), "-m", "flows")
    assert ran.code == 0, ran.err
    assert ran.out.startswith("OK:")
    assert f"{len(events)} events of g1" in ran.out
    ran = cairn_cli("replay", "g1", "-m", "flows", db_url=db_url)
    assert ran.code == 0, ran.err
    assert ran.out.startswith("OK:")
    ran = cairn_cli("replay", "g1", "-m", "flows", "--json", db_url=db_url)
    assert json.loads(ran.out) == {"workflow_id": "g1", "run_id": doc["run_id"], "events": len(events), "ok": True}
    ran = cairn_cli("replay", "s1", "-m", "flows", db_url=db_url)  # an open run replays too
    assert ran.code == 0, ran.err

    # replay against changed code reports where it diverges, exit 1.
    (tmp_path / "flows_v2.py").write_text(textwrap.dedent("""
        from pydantic import BaseModel

        from cairn import activity, workflow


        class Person(BaseModel):
            name: str
            age: int


        @activity.defn
        async def shout(person: Person) -> str:
            return person.name.upper()


        @workflow.defn(name="greet")
        async def greet(person: Person) -> str:
            await workflow.sleep(1)
            return await workflow.execute_activity(shout, person, start_to_close_timeout=30)
    """))
    ran = cairn_cli("replay", "g1", "-m", "flows_v2", db_url=db_url, cwd=tmp_path)
    assert ran.code == 1, ran.out + ran.err
    assert ran.out.startswith("DIVERGED:"), ran.out
    assert "seq 3" in ran.out, ran.out
    assert "Traceback" not in ran.err
    ran = cairn_cli("replay", str(hist_file), "-m", "flows_v2", "--json", cwd=tmp_path)
    assert ran.code == 1
    out = json.loads(ran.out)
    assert out["ok"] is False, out
    assert out["divergence"]["seq"] == 3, out
    # Replays write nothing.
    assert runs_count(db_url) == 4


def test_cancel_and_terminate(workers, db_url):
    workers("w")
    for wid in ("c1", "t1"):
        ran = cairn_cli("start", "sleeper", "--input", "600", "--id", wid, db_url=db_url)
        assert ran.code == 0, ran.err
    for wid in ("c1", "t1"):
        wait_for(f"{wid}'s timer", lambda w=wid: any(t == "TimerStarted" for _, t, _, _ in history(db_url, w)))

    ran = cairn_cli("cancel", "c1", "--reason", "enough", db_url=db_url)
    assert ran.code == 0, ran.err
    assert "cancel requested for c1" in ran.out
    wait_for("c1 to be cancelled", lambda: run_status(db_url, "c1") == "cancelled")
    types = [t for _, t, _, _ in history(db_url, "c1")]
    assert "CancelRequested" in types
    assert types[-1] == "WorkflowCancelled"

    ran = cairn_cli("terminate", "t1", "--reason", "stop now", db_url=db_url)
    assert ran.code == 0, ran.err
    assert "terminated t1" in ran.out
    assert run_status(db_url, "t1") == "terminated"
    last = history(db_url, "t1")[-1]
    assert last[1] == "WorkflowTerminated"
    assert last[2]["reason"] == "stop now"

    ran = cairn_cli("list", "--status", "cancelled", "--json", db_url=db_url)
    assert [r["workflow_id"] for r in json.loads(ran.out)["runs"]] == ["c1"]
    ran = cairn_cli("list", "--status", "terminated", "--json", db_url=db_url)
    assert [r["workflow_id"] for r in json.loads(ran.out)["runs"]] == ["t1"]
    assert query(db_url, "SELECT count(*) FROM cairn.timers") == [(0,)]

    # Steering a closed run is bad input (exit 2): nothing is written.
    for cmd in ("cancel", "terminate"):
        for wid in ("c1", "t1"):
            ran = cairn_cli(cmd, wid, db_url=db_url)
            assert_clean_error(ran, 2, "is closed")
    assert runs_count(db_url) == 2


def test_start_queue_and_id_conflict(db_url):
    # -m validates against the module's code: no worker or registry needed.
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "5", "--id", "dup", "--queue", "other",
                    "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    run_id = json.loads(ran.out)["run_id"]
    assert query(db_url, "SELECT run_id::text, queue, status FROM cairn.runs") == [(run_id, "other", "running")]
    assert query(db_url, "SELECT queue FROM cairn.workflow_tasks") == [("other",)]
    ran = cairn_cli("describe", "dup", "--json", db_url=db_url)
    assert json.loads(ran.out)["queue"] == "other"

    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "5", "--id", "dup", db_url=db_url)
    assert_clean_error(ran, 1, "already running", run_id)
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "5", "--id", "dup",
                    "--id-conflict", "use_existing", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["run_id"] == run_id
    assert runs_count(db_url) == 1

    # A default id is a fresh UUID.
    ran = cairn_cli("start", "sleeper", "-m", "flows", "--input", "5", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    assert len(json.loads(ran.out)["workflow_id"]) == 36
    assert runs_count(db_url) == 2


def test_start_wait_runtime_errors(workers, db_url):
    workers("w")
    ran = cairn_cli("start", "doomed", "--input", '"no luck"', "--id", "d1", "--wait", db_url=db_url)
    assert_clean_error(ran, 1, "workflow 'd1' failed: Doomed: doomed: no luck")
    assert ran.err.count("failed") == 1, f"the failure is said once: {ran.err}"
    assert run_status(db_url, "d1") == "failed"
    ran = cairn_cli("start", "doomed", "--input", '"again"', "--id", "d2", "--wait", "--json", db_url=db_url)
    assert ran.code == 1
    out = json.loads(ran.out)
    assert out["status"] == "failed"
    assert out["failure"] == {"type": "Doomed", "message": "doomed: again"}
    assert "Traceback" not in ran.err

    ran = cairn_cli("start", "sleeper", "--input", "600", "--id", "slowpoke", "--wait", "--timeout", "1",
                    db_url=db_url)
    assert_clean_error(ran, 1, "did not finish within")
    assert run_status(db_url, "slowpoke") == "running"


def test_unreachable_database_is_a_runtime_error(tmp_path):
    url = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=3"
    for args in (("list",), ("db", "status"), ("db", "migrate"), ("describe", "x"),
                 ("start", "sleeper", "-m", "flows", "--input", "1"), ("worker", "-m", "flows")):
        ran = cairn_cli(*args, db_url=url)
        assert_clean_error(ran, 1, "127.0.0.1")
    # Also from the environment.
    ran = cairn_cli("list", env=clean_env(CAIRN_DATABASE_URL=url))
    assert_clean_error(ran, 1, "cannot connect")


# ---------------------------------------------------------------- bad input: exit 2, nothing written

BAD_INPUT = {
    "malformed-json": (["start", "greet", "--input", '{"name": "Ada", '], "--input is not valid JSON"),
    "malformed-json-m": (["start", "greet", "-m", "flows", "--input", "{nope"], "--input is not valid JSON"),
    "missing-input-file": (["start", "greet", "--input", "@/nonexistent/ada.json"], "cannot read --input file"),
    "bad-input-file": (["start", "greet", "--input", "@{tmp}/garbage.txt"], "--input is not valid JSON"),
    "no-input": (["start", "greet"], "--input"),
    "unknown-type-m": (["start", "nosuch", "-m", "flows", "--input", "{}"], "'nosuch'"),
    "unknown-module": (["start", "greet", "-m", "no_such_module_xyz", "--input", ADA], "cannot import module"),
    "invalid-field-type": (["start", "greet", "--input", '{"name": "Ada", "age": "old"}'], "age"),
    "missing-field": (["start", "greet", "--input", '{"name": "Ada"}'], "age"),
    "invalid-field-type-m": (["start", "greet", "-m", "flows", "--input", '{"name": 5, "age": "old"}'], "age"),
    "invalid-scalar": (["start", "sleeper", "--input", '"soon"'], "sleeper"),
    "empty-id": (["start", "greet", "--input", ADA, "--id", " "], "workflow id"),
    "describe-unknown-id": (["describe", "nope"], "no workflow run with id 'nope'"),
    "history-unknown-id": (["history", "nope"], "no workflow run with id 'nope'"),
    "cancel-unknown-id": (["cancel", "nope"], "no workflow run with id 'nope'"),
    "terminate-unknown-id": (["terminate", "nope"], "no workflow run with id 'nope'"),
    "replay-unknown-id": (["replay", "nope", "-m", "flows"], "no workflow run with id 'nope'"),
    "replay-not-history": (["replay", "{tmp}/not-history.json", "-m", "flows"], "is not a history file"),
    "replay-not-json": (["replay", "{tmp}/garbage.txt", "-m", "flows"], "not valid JSON"),
    "replay-empty-events": (["replay", "{tmp}/no-events.json", "-m", "flows"], "history"),
    "replay-events-not-objects": (["replay", "{tmp}/int-events.json", "-m", "flows"], "history"),
    "replay-no-run-id": (["replay", "{tmp}/no-run-id.json", "-m", "flows"], "run"),
    "replay-unknown-type": (["replay", "{tmp}/other-type.json", "-m", "flows"], "no workflow type 'nosuch'"),
    "bad-run-id": (["describe", "existing", "--run-id", "not-a-uuid"], "not-a-uuid"),
    "nan-input": (["start", "sleeper", "--input", "NaN"], "--input"),
    "bad-queue": (["start", "greet", "--input", ADA, "--queue", " spaced"], "queue"),
    "long-id": (["start", "greet", "--input", ADA, "--id", "x" * 1001], "longer than 1000"),
    "worker-unknown-module": (["worker", "-m", "no_such_module_xyz"], "cannot import module"),
    "worker-empty-module": (["worker", "-m", "acceptance_support"], "no @workflow.defn"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_exits_2_and_writes_nothing(db_url, tmp_path, case):
    register_types(db_url)
    start_runs(db_url, flows.greet, [("existing", flows.Person(name="Ada", age=36))])
    started = {"seq": 1, "type": "WorkflowStarted", "data": {"workflow_type": "greet", "input": [{}]}}
    files = {
        "garbage.txt": "this is not json {",
        "not-history.json": {"hello": "world"},
        "no-events.json": {"workflow_id": "w", "run_id": RUN_ID, "workflow_type": "greet", "events": []},
        "int-events.json": {"workflow_id": "w", "run_id": RUN_ID, "workflow_type": "greet", "events": [1, 2]},
        "no-run-id.json": {"workflow_id": "w", "workflow_type": "greet", "events": [started]},
        "other-type.json": {"workflow_id": "w", "run_id": RUN_ID, "workflow_type": "nosuch", "events": [started]},
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    before = query(db_url, "SELECT run_id, status FROM cairn.runs")
    history_before = query(db_url, "SELECT count(*) FROM cairn.history")
    assert len(before) == 1

    args, fragment = BAD_INPUT[case]
    ran = cairn_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], db_url=db_url)

    assert_clean_error(ran, 2, fragment)
    assert ran.err.startswith("error: ") or ran.err.startswith("Usage:"), ran.err
    assert query(db_url, "SELECT run_id, status FROM cairn.runs") == before
    assert query(db_url, "SELECT count(*) FROM cairn.history") == history_before
    assert query(db_url, "SELECT count(*) FROM cairn.inbox") == [(0,)]


def test_usage_errors_exit_2(db_url):
    for args in (["list", "--status", "bogus"], ["start"], ["nosuchcommand"], ["replay", "x"]):
        ran = cairn_cli(*args, db_url=db_url)
        assert ran.code == 2, (args, ran.err)
        assert "Traceback" not in ran.err
        assert "Usage:" in ran.err
    assert runs_count(db_url) == 0


def test_help_and_version():
    ran = cairn_cli("--help")
    assert ran.code == 0
    for cmd in ("db", "worker", "start", "list", "describe", "history", "replay", "cancel", "terminate"):
        assert cmd in ran.out
    ran = cairn_cli("--version")
    assert ran.code == 0
    assert "0.1.0" in ran.out
