"""Retention, purge and archival on real Postgres (issue 18, item 1): the workers' retention
pass removes closed runs past their namespace's retention and nothing else, whole (no row
of theirs left in any table); a run whose parent is open is held back; archived runs replay;
a dry run writes nothing; bad input is refused before anything is written."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cairn import InputValidationError, testing
from cairn.errors import ConfigurationError
from cairn.store import archive
from cairn.store import retention as store
from cairn.verify import verify
from support import cairn, cairn_in_thread, ok, wait_until

from . import retention_flows as flows

FLOWS = [flows.kept_parent, flows.kept_child, flows.waits_for_go]
T = 20


def run_tables(sql) -> list[str]:
    """Every cairn table with a run_id column."""
    return [r[0] for r in sql("SELECT table_name FROM information_schema.columns WHERE table_schema = 'cairn' "
                              "AND column_name = 'run_id' ORDER BY table_name")]


def rows_of(sql, run_ids: list[str]) -> dict[str, int]:
    """Per table, the rows that belong to these runs."""
    return {t: sql(f"SELECT count(*) FROM cairn.{t} WHERE run_id = ANY(%s::uuid[])", (run_ids,))[0][0]
            for t in run_tables(sql)}


def run_ids(sql, pattern: str) -> list[str]:
    return [str(r[0]) for r in sql("SELECT run_id FROM cairn.runs WHERE workflow_id LIKE %s ORDER BY run_id",
                                   (pattern,))]


def backdate(sql, pattern: str, days: int = 40) -> None:
    sql("UPDATE cairn.runs SET closed_at = closed_at - %s * interval '1 day' "
        "WHERE workflow_id LIKE %s AND closed_at IS NOT NULL", (days, pattern))


async def settled(sql) -> None:
    """Waits until the open runs wait (no workflow task or timer pending)."""
    await wait_until(lambda: sql("SELECT (SELECT count(*) FROM cairn.workflow_tasks) + "
                                 "(SELECT count(*) FROM cairn.timers)") == [(0,)], timeout=T)


async def no_retention_pass(sql) -> None:
    """Waits until no worker's retention pass holds its lock (it ends with a pause)."""
    await wait_until(lambda: sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s",
                                 (store.LOCK_CLASS,)) == [(0,)], timeout=T)


async def finished_parent(client, wid: str, n: int) -> None:
    h = await client.start(flows.kept_parent, n, id=wid)
    await h.execute_update("finish")
    assert await h.result(timeout=T) == 2 * n + 1


async def test_the_retention_pass_removes_closed_runs_past_it_whole(client, db_url, sql, start_worker, tmp_path):
    await start_worker(workflows=FLOWS, activities=[flows.double])
    await finished_parent(client, "old-1", 1)
    await finished_parent(client, "old-2", 2)
    await finished_parent(client, "young-1", 3)
    held = await client.start(flows.kept_parent, 4, id="held-1")  # waits for "finish": open, its child closed
    await wait_until(lambda: sql("SELECT status FROM cairn.runs WHERE workflow_id = 'held-1-child'")
                     == [("completed",)], timeout=T)
    opened = await client.start(flows.waits_for_go, id="open-1")
    backdate(sql, "old-%")
    backdate(sql, "held-%")
    sql("UPDATE cairn.runs SET created_at = created_at - interval '50 days' WHERE workflow_id = 'open-1'")
    old = run_ids(sql, "old-%")
    assert len(old) == 4  # two parents, two children
    assert all(n > 0 for t, n in rows_of(sql, old).items() if t in ("history", "updates"))
    others = [r for r in run_ids(sql, "%") if r not in old]
    await settled(sql)  # held-1 records its child's outcome and its timer, then waits
    kept_before = rows_of(sql, others)

    ns = client.get_namespace_handle()
    assert (await ns.describe()).retention is None  # the default: forever
    settings = await ns.update(retention="30d", archive=str(tmp_path / "archive"))
    assert (settings.retention, settings.archive_uri) == (timedelta(days=30), f"file://{tmp_path}/archive")

    # A worker started now runs a retention pass at once (then every minute).
    await start_worker(workflows=FLOWS, activities=[flows.double])
    await wait_until(lambda: not run_ids(sql, "old-%"), timeout=T)

    assert rows_of(sql, old) == dict.fromkeys(run_tables(sql), 0)  # nothing of theirs anywhere
    assert rows_of(sql, others) == kept_before  # nothing of the others touched
    assert {r[0] for r in sql("SELECT workflow_id FROM cairn.runs")} == {
        "young-1", "young-1-child", "held-1", "held-1-child", "open-1"}
    files = sorted((tmp_path / "archive" / "default").rglob("*.jsonl"))
    archived = [r for f in files for r in archive.read_runs(f)]
    assert sorted(r.run_id for r in archived) == sorted(old)
    for r in archived:  # each archived run replays with the code
        assert testing.replay_history(FLOWS, r.document).run_id == r.run_id

    # The held child goes once its parent has closed (and is past the retention too).
    await held.execute_update("finish")
    await held.result(timeout=T)
    backdate(sql, "held-1")
    # The worker's pass, if still going, or this one (the lock once it is free) takes them.
    await no_retention_pass(sql)
    assert await store.purge_expired(client.pool, busy=1.0) is not None
    assert run_ids(sql, "held-%") == []
    assert len([r for f in (tmp_path / "archive").rglob("*.jsonl") for r in archive.read_runs(f)]) == 6

    await opened.signal("go", "now")
    await opened.result(timeout=T)
    report = await verify(db_url, workflows=FLOWS)
    assert report.ok(), report


async def test_purge_by_filter_keeps_open_runs_and_dry_run_writes_nothing(client, sql, start_worker, tmp_path):
    await start_worker(workflows=FLOWS, activities=[flows.double])
    await finished_parent(client, "a-1", 1)
    await finished_parent(client, "b-1", 2)
    opened = await client.start(flows.waits_for_go, id="a-open")
    ns = client.get_namespace_handle()
    await settled(sql)
    before = sql("SELECT count(*) FROM cairn.history")

    dry = await ns.purge(where="WorkflowId STARTS_WITH 'a-'", dry_run=True)
    assert (dry.dry_run, dry.runs, dry.open, dry.young, dry.held) == (True, 2, 1, 0, 0)
    assert sorted(s["workflow_id"] for s in dry.sample or []) == ["a-1", "a-1-child"]
    assert sql("SELECT count(*) FROM cairn.history") == before
    assert sql("SELECT count(*) FROM cairn.runs") == [(5,)]

    aged = await ns.purge(where="WorkflowId STARTS_WITH 'a-'", older_than="1d", dry_run=True)
    assert (aged.runs, aged.young) == (0, 2)

    events = sql("SELECT count(*) FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                 "WHERE r.workflow_id IN ('a-1', 'a-1-child')")[0][0]
    seen: list[int] = []
    out = await ns.purge(where="WorkflowId STARTS_WITH 'a-'", archive=tmp_path, chunk_size=1,
                         on_progress=lambda p: seen.append(p.runs))
    assert (out.runs, out.events, out.open, out.chunks, seen) == (2, events, 1, 2, [1, 2])
    assert {r[0] for r in sql("SELECT workflow_id FROM cairn.runs")} == {"a-open", "b-1", "b-1-child"}
    lines = [r for f in (out.files or []) for r in archive.read_runs(f)]
    assert sorted(r.workflow_id for r in lines) == ["a-1", "a-1-child"]
    assert {r.document["status"] for r in lines} == {"completed"}
    await opened.signal("go", 1)
    assert await opened.result(timeout=T) == "1"


async def test_archived_runs_replay_from_the_command_line(client, db_url, sql, start_worker, tmp_path,
                                                          monkeypatch):
    await start_worker(workflows=FLOWS, activities=[flows.double])
    for i in range(3):
        await finished_parent(client, f"r-{i}", i)
    parent = run_ids(sql, "r-1")[0]
    ok(await cairn_in_thread(db_url, "namespace", "update", "--archive", f"file://{tmp_path}/arc"))
    shown = json.loads(ok(await cairn_in_thread(db_url, "purge", "--yes", "--json", "--chunk-size", "100")))
    assert shown["runs"] == 6
    assert len(shown["files"]) == 1
    [path] = shown["files"]
    assert Path(path).parent.parent == tmp_path / "arc" / "default"
    monkeypatch.chdir(Path(flows.__file__).parent)
    module = "retention_flows"
    assert "OK: 6 of 6 runs replay" in ok(await cairn_in_thread(db_url, "replay", path, "-m", module))
    assert "OK:" in ok(await cairn_in_thread(db_url, "replay", path, "-m", module, "--run-id", parent))
    found = json.loads(ok(await cairn_in_thread(db_url, "archive", "show", "r-1", "--json")))
    assert found["run_id"] == parent
    assert found["events"][0]["type"] == "WorkflowStarted"
    one = tmp_path / "one.json"
    one.write_text(json.dumps(found))
    assert "OK:" in ok(await cairn_in_thread(db_url, "replay", str(one), "-m", module))
    assert testing.replay_history(FLOWS, path, run_id=parent).run_id == parent
    with pytest.raises(InputValidationError, match="holds 6 runs: pass run_id="):
        testing.replay_history(FLOWS, path)


async def test_a_rerun_replaces_the_file_of_a_chunk_that_did_not_commit(client, sql, start_worker, tmp_path,
                                                                        monkeypatch):
    """A chunk whose delete did not commit (the process died after the file was written)
    leaves its file; the next purge takes the same runs first and replaces that file."""
    await start_worker(workflows=FLOWS, activities=[flows.double])
    for i in range(3):
        await finished_parent(client, f"c-{i}", i)
    cutoff = await _cutoff(client)

    class Died(Exception):
        pass

    real = store.q

    def dies_before_the_delete(name: str) -> str:
        if name == "purge_runs":
            raise Died
        return real(name)

    with monkeypatch.context() as m:
        m.setattr(store, "q", dies_before_the_delete)
        async with client.pool.connection() as conn:
            with pytest.raises(Died):
                await store.purge(conn, "default", cutoff=cutoff, archive_dir=tmp_path, busy=1.0)
    [first] = list(tmp_path.rglob("*.jsonl"))
    assert len(list(archive.read_runs(first))) == 6
    assert len(run_ids(sql, "c-%")) == 6  # nothing deleted
    async with client.pool.connection() as conn:
        done = await store.purge(conn, "default", cutoff=cutoff, archive_dir=tmp_path, busy=1.0)
    assert done.runs == 6
    assert done.files == [str(first)]
    assert list(tmp_path.rglob("*.jsonl")) == [first]  # replaced, not a second file
    assert len({r.run_id for r in archive.read_runs(first)}) == len(list(archive.read_runs(first))) == 6
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


async def _cutoff(client) -> Any:
    async with client.pool.connection() as conn:
        return await store.cutoff_of(conn, None)


async def test_an_archive_that_cannot_be_written_keeps_the_runs(client, sql, start_worker, tmp_path):
    await start_worker(workflows=FLOWS, activities=[flows.double])
    await finished_parent(client, "w-1", 1)
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    ns = client.get_namespace_handle()
    with pytest.raises(ConfigurationError, match="cannot write the archive"):
        await ns.purge(archive=blocked / "sub")
    assert len(run_ids(sql, "w-%")) == 2
    await ns.update(retention="1h", archive=f"file://{blocked}/sub")
    backdate(sql, "w-%", days=1)
    assert (await store.purge_expired(client.pool, busy=1.0)) == {}  # logged, skipped
    assert len(run_ids(sql, "w-%")) == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"retention": "0"}, "at least 1 hour"),
    ({"retention": "59m"}, "at least 1 hour"),
    ({"retention": -3}, "at least 1 hour"),
    ({"retention": True}, "want a duration"),
    ({"retention": "abc"}, "want a duration"),
    ({"retention": "999999d"}, "at most"),
    ({"archive": "s3://bucket/x"}, "only file://"),
    ({"archive": "relative/dir"}, "only file://"),
    ({"archive": "file://host/dir"}, "names no host"),
    ({}, "update what"),
])
async def test_bad_settings_write_nothing(client, sql, kwargs, message):
    with pytest.raises(InputValidationError, match=message):
        await client.get_namespace_handle().update(**kwargs)
    assert sql("SELECT count(*) FROM cairn.namespaces") == [(0,)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"where": "WorkflowId = 'x"}, "unterminated"),
    ({"older_than": "soon"}, "want a duration"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"busy": 0}, "busy"),
    ({"archive": "ftp://x/y"}, "only file://"),
])
async def test_bad_purges_write_nothing(client, sql, kwargs, message, tmp_path):
    sql("INSERT INTO cairn.runs (run_id, workflow_id, workflow_type, queue, status, closed_at) "
        "VALUES (gen_random_uuid(), 'x', 't', 'q', 'completed', now() - interval '9 days')")
    with pytest.raises(InputValidationError, match=message):
        await client.get_namespace_handle().purge(**kwargs)
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]


def test_cli_bad_input_and_dry_run(db_url, sql):
    sql("INSERT INTO cairn.runs (run_id, workflow_id, workflow_type, queue, status, closed_at) "
        "VALUES (gen_random_uuid(), 'x', 't', 'q', 'completed', now() - interval '9 days')")
    for args, fragment in ((["namespace", "update", "--retention", "10m"], "at least 1 hour"),
                           (["namespace", "update"], "give --retention"),
                           (["purge", "--where", "WorkflowId = 'x"], "unterminated"),
                           (["purge", "--archive", "/a", "--no-archive"], "contradict"),
                           (["purge"], "add --yes")):
        ran = cairn(db_url, *args)
        assert ran.exit_code == 2, (args, ran.output)
        assert fragment in ran.stderr, (args, ran.stderr)
    out = ok(cairn(db_url, "purge", "--older-than", "7d", "--dry-run"))
    assert "would purge 1 closed run " in out
    assert json.loads(ok(cairn(db_url, "purge", "--dry-run", "--json", "--older-than", "10d")))["runs"] == 0
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]
    shown = json.loads(ok(cairn(db_url, "namespace", "update", "--retention", "30d", "--json")))
    assert (shown["retention"], shown["retention_seconds"]) == ("30d", 30 * 86_400)
    assert "kept 30d" in ok(cairn(db_url, "namespace", "describe"))
    assert "forever" in ok(cairn(db_url, "namespace", "update", "--retention", "forever"))
    listed = json.loads(ok(cairn(db_url, "namespace", "list", "--json")))
    assert [(n["namespace"], n["retention"]) for n in listed] == [("default", "forever")]


def test_history_stays_append_only_but_to_the_purge(db_url, sql):
    sql("INSERT INTO cairn.runs (run_id, workflow_id, workflow_type, queue) VALUES "
        "('00000000-0000-7000-8000-000000000001', 'open', 't', 'q')")
    sql("INSERT INTO cairn.history (run_id, seq, type) VALUES ('00000000-0000-7000-8000-000000000001', 1, 'X')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        sql("DELETE FROM cairn.history")
    # The function removes closed runs only: an open run is left whole.
    assert sql("SELECT * FROM cairn.purge_closed_runs(ARRAY['00000000-0000-7000-8000-000000000001'::uuid])") \
        == [(0, 0)]
    assert sql("SELECT count(*) FROM cairn.history") == [(1,)]
