"""The invariant checker, itself tested: real runs on a real worker give a clean report;
bugs planted in the database or in history are each caught with the right invariant id."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from cairn import ApplicationError, Client, RetryPolicy, Worker, WorkflowFailure, activity, workflow
from cairn.cli import main as cli
from cairn.store.sql import q
from cairn.verify import EFFECT_INSERT, EFFECTS_DDL, AckLog, Report, verify
from support import events, wait_until

QUICK = RetryPolicy(initial_interval=timedelta(milliseconds=20), maximum_attempts=3, jitter=0.0)
_url: dict[str, str] = {}
CANARY = 'sk-canary-"7f3a9"-do-not-leak'


@activity.defn
async def write_effect(tag: str, i: int, flaky: bool) -> str:
    """One step with an effect in the sink; fails its first attempt when flaky."""
    info = activity.info()
    async with await psycopg.AsyncConnection.connect(_url["db"], autocommit=True) as conn:
        await conn.execute("INSERT INTO chaos.attempts (run_id, seq, attempt) VALUES (%s, %s, %s)",
                           (info.run_id, info.seq, info.attempt))
        if flaky and info.attempt == 1:
            raise ApplicationError("transient", type="Transient")
        await conn.execute(EFFECT_INSERT, {"idempotency_key": info.idempotency_key, "run_id": info.run_id,
                                           "seq": info.seq, "attempt": info.attempt, "kind": info.activity_type})
    return f"{tag}-{i}"


@activity.defn
async def book(i: int, fail_at: int) -> str:
    if i == fail_at:
        raise ApplicationError(f"no room at {i}", type="NoRoom", non_retryable=True)
    return f"booking-{i}"


@activity.defn
async def unbook(i: int) -> None:
    return None


@workflow.defn
async def pipeline(tag: str, n: int, flaky: bool = False) -> list[str]:
    return [await workflow.execute_activity(write_effect, tag, i, flaky, start_to_close_timeout=30,
                                            retry_policy=QUICK) for i in range(n)]


@workflow.defn
async def trip(n: int, fail_at: int) -> list[str]:
    out = []
    async with workflow.saga() as saga:
        for i in range(1, n + 1):
            out.append(await workflow.execute_activity(book, i, fail_at, start_to_close_timeout=30))
            saga.compensate(unbook, i, start_to_close_timeout=30)
    return out


@workflow.defn
async def waiter(tag: str) -> str:
    await workflow.execute_activity(write_effect, tag, 0, False, start_to_close_timeout=30)
    return str(await workflow.wait_signal("go"))


FLOWS = [pipeline, trip, waiter]


@dataclass
class World:
    url: str
    client: Client
    acks: Path
    runs: dict[str, str]  # name -> run id
    tmp: Path
    worker: Worker
    runner: asyncio.Task[None]

    async def stop_worker(self) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.runner, 30)

    async def check(self, **kwargs: Any) -> Report:
        kwargs.setdefault("acks", self.acks)
        kwargs.setdefault("workflows", FLOWS)
        kwargs.setdefault("effects_table", "chaos.effects")
        return await verify(self.url, **kwargs)


def invariants(report: Report) -> set[str]:
    return {v.invariant for v in report.violations}


def sql_on(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def append(url: str, run_id: str, evs: list[dict[str, Any]]) -> None:
    """Writes events with the engine's own append statement (the history trigger allows INSERT)."""
    sql_on(url, q("append_history"), {"run_id": run_id, "events": Jsonb(evs), "now": None})


def last_seq(url: str, run_id: str) -> int:
    return int(sql_on(url, "SELECT max(seq) FROM cairn.history WHERE run_id = %s", (run_id,))[0][0])


@pytest.fixture
async def world(db_url: str, client: Client, tmp_path: Path) -> AsyncIterator[World]:
    """A few real runs: plain, flaky (re-executed), a compensated saga, one waiting for a
    signal, with every start acknowledged in an AckLog and every effect in the sink."""
    _url["db"] = db_url
    sql_on(db_url, EFFECTS_DDL)
    worker = Worker(db_url, workflows=FLOWS, activities=[write_effect, book, unbook], poll_interval=0.2,
                    lease_seconds=5.0)
    runner = asyncio.create_task(worker.run())
    await worker.started()
    log = AckLog(tmp_path / "acks.jsonl")
    runs: dict[str, str] = {}
    for name, fn, args in [("plain", pipeline, ("p", 3)), ("flaky", pipeline, ("f", 2, True)),
                           ("saga", trip, (3, 3)), ("waiting", waiter, ("w",))]:
        async with log.starting(f"wf-{name}") as rec:
            handle = await client.start(fn, *args, id=f"wf-{name}")
            rec.ok(handle)
        runs[name] = handle.run_id
    for name in ("plain", "flaky"):
        await client.get_handle(f"wf-{name}").result(timeout=20)
    with pytest.raises(WorkflowFailure, match="no room at 3"):
        await client.get_handle("wf-saga").result(timeout=20)

    async def waiting_ready() -> bool:
        return any(t == "ActivityCompleted" for _, t, _ in events(lambda s, p=None: sql_on(db_url, s, p),
                                                                   runs["waiting"]))

    await wait_until(waiting_ready, what="the waiter's activity")
    w = World(db_url, client, log.path, runs, tmp_path, worker, runner)
    yield w
    if not runner.done():
        await w.stop_worker()


# ---------------------------------------------------------------- clean


async def test_clean_world_reports_nothing(world: World) -> None:
    await world.client.get_handle("wf-waiting").signal("go", "now")
    await world.client.get_handle("wf-waiting").result(timeout=20)
    report = await world.check(canaries=[CANARY], settle_timeout=10, expect_reexecution=True)
    assert report.ok(), report.to_json()
    assert report.checked_runs == 4
    assert report.stats["replay"]["replayed"] == 4
    assert report.stats["saga_runs_checked"] == 1
    assert report.stats["effects"]["rows"] == 6
    assert report.stats["effects"]["kinds"] == ["write_effect"]
    assert report.stats["attempts"]["reexecuted"] >= 2
    assert report.stats["acks"]["ok"] == 4
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


# ---------------------------------------------------------------- planted bugs


async def test_dropped_fence_second_completion_is_caught(world: World) -> None:
    run = world.runs["waiting"]
    scheduled = sql_on(world.url, "SELECT seq FROM cairn.history WHERE run_id = %s AND type = 'ActivityScheduled'",
                       (run,))[0][0]
    # A superseded attempt whose completion got through: a second outcome, a later seq.
    append(world.url, run, [{"seq": last_seq(world.url, run) + 1, "type": "ActivityCompleted",
                             "data": {"activity_seq": scheduled, "attempt": 2, "result": "w-0"}}])
    report = await world.check(workflows=())
    [v] = [v for v in report.violations if v.invariant == "activity.double_completion"]
    assert v.run_id == run
    assert v.workflow_id == "wf-waiting"
    assert f"activity {scheduled}" in v.detail
    assert invariants(report) - {"run.stuck"} == {"activity.double_completion"}


async def test_duplicated_completion_after_close_is_caught(world: World) -> None:
    run = world.runs["plain"]
    completed = sql_on(world.url, "SELECT data FROM cairn.history WHERE run_id = %s AND type = 'ActivityCompleted' "
                                  "ORDER BY seq LIMIT 1", (run,))[0][0]
    append(world.url, run, [{"seq": last_seq(world.url, run) + 1, "type": "ActivityCompleted", "data": completed}])
    found = invariants(await world.check())
    assert {"activity.double_completion", "history.after_terminal"} <= found


async def test_skipped_compensation_is_caught(world: World) -> None:
    # Forge a copy of the compensated saga's history without compensation 1's events.
    original = events(lambda s, p=None: sql_on(world.url, s, p), world.runs["saga"])
    comp1 = next(seq for seq, t, d in original if t == "ActivityScheduled" and d.get("compensation") == 1)
    forged, seq = [], 0
    for _, t, d in original:
        if (t == "ActivityScheduled" and d.get("compensation") == 1) or d.get("activity_seq") == comp1:
            continue
        seq += 1
        forged.append({"seq": seq, "type": t, "data": d})
    run = str(uuid.uuid4())
    sql_on(world.url, "INSERT INTO cairn.runs (run_id, workflow_id, workflow_type, queue, status, closed_at) "
                      "VALUES (%s, 'wf-forged', 'trip', 'default', 'failed', now())", (run,))
    append(world.url, run, forged)
    report = await world.check(workflows=())
    problems = [v for v in report.violations if v.invariant == "saga.compensation_order"]
    assert [v.run_id for v in problems] == [run]
    assert "compensation 1 (unbook) never ran" in problems[0].detail
    assert invariants(report) - {"run.stuck"} == {"saga.compensation_order"}


async def test_compensation_run_twice_is_caught(world: World) -> None:
    run = world.runs["saga"]
    original = events(lambda s, p=None: sql_on(world.url, s, p), run)
    comp0 = next((seq, d) for seq, t, d in original if t == "ActivityScheduled" and d.get("compensation") == 0)
    forged = [{"seq": i, "type": t, "data": d} for i, (_, t, d) in enumerate(original, 1)]
    end = next(i for i, e in enumerate(forged) if e["type"] == "WorkflowFailed")
    forged[end:end] = [{"seq": 0, "type": "ActivityScheduled", "data": comp0[1]}]
    for i, e in enumerate(forged, 1):
        e["seq"] = i
    copy = str(uuid.uuid4())
    sql_on(world.url, "INSERT INTO cairn.runs (run_id, workflow_id, workflow_type, queue, status, closed_at) "
                      "VALUES (%s, 'wf-forged', 'trip', 'default', 'failed', now())", (copy,))
    append(world.url, copy, forged)
    report = await world.check(workflows=())
    [v] = [v for v in report.violations if v.invariant == "saga.compensation_order"]
    assert v.run_id == copy
    assert "compensation 0 (unbook) ran 2 times" in v.detail


async def test_gap_in_seqs_is_caught(world: World) -> None:
    run = world.runs["waiting"]
    n = last_seq(world.url, run)
    append(world.url, run, [{"seq": n + 2, "type": "WorkflowTaskStarted", "data": {}}])
    report = await world.check(workflows=())
    [v] = [v for v in report.violations if v.invariant == "history.gap"]
    assert v.run_id == run
    assert v.detail == f"seq {n} is followed by seq {n + 2}"


async def test_event_after_terminal_and_status_mismatch_are_caught(world: World) -> None:
    run = world.runs["plain"]
    n = last_seq(world.url, run)
    append(world.url, run, [{"seq": n + 1, "type": "WorkflowTaskStarted", "data": {}}])
    other = world.runs["flaky"]
    sql_on(world.url, "UPDATE cairn.runs SET status = 'failed' WHERE run_id = %s", (other,))
    report = await world.check(workflows=())
    after = [v for v in report.violations if v.invariant == "history.after_terminal"]
    assert [(v.run_id, v.detail) for v in after] == [
        (run, f"WorkflowTaskStarted at seq {n + 1} after the terminal event at seq {n}")]
    [m] = [v for v in report.violations if v.invariant == "history.status_mismatch"]
    assert m.run_id == other
    assert "failed" in m.detail
    assert "WorkflowCompleted" in m.detail


async def test_unmatched_timer_fired_is_caught(world: World) -> None:
    run = world.runs["waiting"]
    append(world.url, run, [{"seq": last_seq(world.url, run) + 1, "type": "TimerFired", "data": {"timer_seq": 2}}])
    report = await world.check(workflows=())
    [v] = [v for v in report.violations if v.invariant == "history.unmatched"]
    assert v.run_id == run
    assert "TimerStarted" in v.detail


async def test_lost_acknowledged_start_is_caught(world: World) -> None:
    ghost = str(uuid.uuid4())
    AckLog(world.acks).record_start("wf-ghost", run_id=ghost, outcome="ok")
    report = await world.check()
    lost = [v for v in report.violations if v.invariant == "start.lost"]
    assert [(v.run_id, v.workflow_id) for v in lost] == [(ghost, "wf-ghost")]


async def test_ambiguous_starts(world: World) -> None:
    log = AckLog(world.acks)
    # Committed, then the client lost the answer: exists once, fine.
    async with log.starting("wf-amb-once", reraise=False) as rec:
        await world.client.start(pipeline, "a", 1, id="wf-amb-once")
        raise ConnectionError("connection lost after commit")
    assert rec.outcome == "ambiguous"
    # Never reached the database, not retried: absent, fine.
    async with log.starting("wf-amb-never", reraise=False):
        raise TimeoutError("no answer")
    # Ambiguous, then the retry ran the workflow a second time (the bug).
    async with log.starting("wf-amb-dup", reraise=False):
        first = await world.client.start(pipeline, "d", 1, id="wf-amb-dup")
        raise ConnectionError("connection lost after commit")
    await first.result(timeout=20)
    async with log.starting("wf-amb-dup") as retry:
        retry.ok(await world.client.start(pipeline, "d", 1, id="wf-amb-dup"))
    await world.client.get_handle("wf-amb-dup").result(timeout=20)
    report = await world.check(settle_timeout=5)
    assert invariants(report) - {"run.stuck"} == {"start.duplicated"}, report.to_json()
    [v] = [v for v in report.violations if v.invariant == "start.duplicated"]
    assert v.workflow_id == "wf-amb-dup"
    assert "2 runs for 1 start(s)" in v.detail
    assert report.stats["acks"]["ambiguous_committed"] == 1
    assert report.stats["acks"]["ambiguous_absent"] == 1


async def test_stuck_run_expired_lease_and_lingering_rows_are_caught(world: World) -> None:
    run = world.runs["waiting"]
    await world.stop_worker()  # a live worker's reaper would reclaim the lease
    sql_on(world.url, """
        INSERT INTO cairn.activity_tasks (run_id, seq, workflow_id, workflow_type, workflow_queue, activity_type, queue,
            input, options, attempt, scheduled_at, available_at, lease_owner, lease_expires_at)
        VALUES (%s, 99, 'wf-waiting', 'waiter', 'nowhere', 'write_effect', 'nowhere', '[]', '{}', 1, now(), now(),
                'dead-worker', now() - interval '1 minute')""", (run,))
    closed = world.runs["plain"]
    sql_on(world.url, "INSERT INTO cairn.inbox (run_id, type, data) VALUES (%s, 'SignalReceived', '{}')", (closed,))
    report = await world.check(workflows=(), settle_timeout=0.5)
    assert report.stats["settle_seconds"] >= 0.5
    by = {v.invariant: v for v in report.violations}
    assert set(by) == {"run.stuck", "lease.expired", "tasks.not_drained"}, report.to_json()
    assert by["run.stuck"].run_id == run
    assert "still running" in by["run.stuck"].detail
    assert by["lease.expired"].run_id == run
    assert "dead-worker" in by["lease.expired"].detail
    assert by["tasks.not_drained"].run_id == closed
    assert "cairn.inbox" in by["tasks.not_drained"].detail


async def test_canary_in_a_row_and_in_a_log_is_caught_without_printing_it(world: World) -> None:
    await world.client.start(waiter, "leak", id="wf-leaky", memo={"note": CANARY})
    log = world.tmp / "worker.log"
    log.write_text("started\nall good\nkey=" + CANARY + "\n")
    report = await world.check(workflows=(), canaries=["unused-canary", CANARY], log_files=[log])
    leaks = [v for v in report.violations if v.invariant == "secret.leaked"]
    details = sorted(v.detail for v in leaks)
    assert any("canary #2 in cairn.runs column(s) memo" in d for d in details), details
    assert f"canary #2 in {log} line 3" in details
    assert all("#1" not in d for d in details)
    text = json.dumps(report.to_json())
    assert CANARY not in text
    assert json.dumps(CANARY)[1:-1] not in text


async def test_missing_effect_is_caught(world: World) -> None:
    run = world.runs["plain"]
    seq = sql_on(world.url, "DELETE FROM chaos.effects WHERE run_id = %s AND seq = "
                            "(SELECT min(seq) FROM chaos.effects WHERE run_id = %s) RETURNING seq", (run, run))[0][0]
    report = await world.check(workflows=())
    [v] = [v for v in report.violations if v.invariant != "run.stuck"]
    assert (v.invariant, v.run_id) == ("effects.missing", run)
    assert f"activity {seq} (write_effect)" in v.detail


async def test_duplicated_effect_under_another_key_is_caught(world: World) -> None:
    run = world.runs["plain"]
    sql_on(world.url, "INSERT INTO chaos.effects SELECT idempotency_key || '-again', run_id, seq, attempt + 1, kind "
                      "FROM chaos.effects WHERE run_id = %s ORDER BY seq LIMIT 1", (run,))
    report = await world.check(workflows=())
    assert [(v.invariant, v.run_id) for v in report.violations if v.invariant != "run.stuck"] == [
        ("effects.duplicated", run)]


async def test_no_reexecution_is_caught(db_url: str, client: Client, start_worker: Callable[..., Any]) -> None:
    _url["db"] = db_url
    sql_on(db_url, EFFECTS_DDL)
    await start_worker(workflows=FLOWS, activities=[write_effect])
    await (await client.start(pipeline, "x", 2, id="wf-steady")).result(timeout=20)
    report = await verify(db_url, effects_table="chaos.effects", workflows=FLOWS, expect_reexecution=True)
    assert invariants(report) == {"effects.no_reexecution"}
    assert (await verify(db_url, effects_table="chaos.effects", workflows=FLOWS)).ok()


async def test_replay_divergence_is_caught(world: World) -> None:
    # Defined here, not at module level, so that `cairn verify -m <this module>` does not see it.
    @workflow.defn(name="pipeline")
    async def pipeline_changed(tag: str, n: int, flaky: bool = False) -> list[str]:
        """The pipeline's code after an incompatible change: a different first activity."""
        await workflow.execute_activity(book, 0, -1, start_to_close_timeout=30)
        return []

    report = await world.check(workflows=[pipeline_changed, trip])
    diverged = [v for v in report.violations if v.invariant == "replay.diverged"]
    assert sorted(v.workflow_id or "" for v in diverged) == ["wf-flaky", "wf-plain"]
    assert all("write_effect" in v.detail and "book" in v.detail for v in diverged)
    assert report.stats["replay"]["skipped_by_type"] == {"waiter": 1}


async def test_bad_arguments(world: World) -> None:
    from cairn.errors import InputValidationError

    with pytest.raises(InputValidationError, match="acknowledgement log"):
        await world.check(acks=world.tmp / "missing.jsonl")
    with pytest.raises(InputValidationError, match="does not exist"):
        await world.check(effects_table="chaos.nothing")
    with pytest.raises(InputValidationError, match="not a table name"):
        await world.check(effects_table="chaos.effects; DROP TABLE x")
    bad = world.tmp / "bad.jsonl"
    bad.write_text('{"op": "start", "workflow_id": "a", "run_id": null, "outcome": "ok"}\n{nope\n')
    with pytest.raises(InputValidationError, match="line 2"):
        await world.check(acks=bad)


# ---------------------------------------------------------------- the command line


async def cairn(url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """``cairn verify ...`` (in a thread: the command runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", url, "verify", *args], env=env)


async def test_cli(world: World) -> None:
    await world.client.get_handle("wf-waiting").signal("go", "now")
    await world.client.get_handle("wf-waiting").result(timeout=20)
    mod = __name__
    ok = await cairn(world.url, "--json", "--acks", str(world.acks), "-m", mod, "--effects-table", "chaos.effects",
               "--canary-env", "VERIFY_CANARY", "--settle", "5", env={"VERIFY_CANARY": CANARY})
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.output)
    assert out["ok"] is True
    assert out["checked_runs"] == 4
    assert out["stats"]["replay"]["replayed"] == 4

    human = await cairn(world.url, "-m", mod)
    assert human.exit_code == 0
    assert "OK: 4 runs checked, 4 replayed" in human.output

    run = world.runs["plain"]
    append(world.url, run, [{"seq": last_seq(world.url, run) + 2, "type": "WorkflowTaskStarted", "data": {}}])
    bad = await cairn(world.url, "--json")
    assert bad.exit_code == 1
    assert {"history.gap", "history.after_terminal"} <= set(json.loads(bad.output)["by_invariant"])
    human = await cairn(world.url)
    assert human.exit_code == 1
    assert f"history.gap: workflow wf-plain run {run}: seq" in human.output

    assert (await cairn(world.url, "--acks", str(world.tmp / "missing.jsonl"))).exit_code == 2
    nomod = await cairn(world.url, "-m", "no_such_module_here")
    assert nomod.exit_code == 2
    assert "no_such_module_here" in nomod.output
    assert (await cairn(world.url, "--canary-env", "VERIFY_UNSET_VARIABLE")).exit_code == 2
    assert (await cairn(world.url, "--effects-table", "chaos.nothing")).exit_code == 2
    assert (await cairn(world.url, "--settle", "-1")).exit_code == 2
