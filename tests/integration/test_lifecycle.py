"""The run lifecycle with real workers: child workflows and parent close policies,
continue-as-new chains, execution timeouts, id reuse policies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cairn import (
    ApplicationError,
    ChildWorkflowError,
    WorkflowCancelled,
    WorkflowIdReuseRefused,
    WorkflowTimedOutError,
    workflow,
)
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.workflow import WorkflowInfo, definition_of
from support import events, run_status, types_of, wait_until

# ---------------------------------------------------------------- workflows


@workflow.defn
async def doubler(x: int) -> int:
    await workflow.sleep(0.05)
    return x * 2


@workflow.defn
async def breaks(msg: str) -> str:
    raise ApplicationError(msg, type="ChildBroke", details={"why": msg})


@workflow.defn
async def napper(tag: str) -> str:
    await workflow.sleep(3600)
    return tag


@workflow.defn
async def parent_adds(x: int) -> dict[str, Any]:
    handle = await workflow.start_child_workflow(doubler, x)
    started_run = handle.run_id
    value = await handle
    return {"value": value + 1, "child_id": handle.workflow_id, "child_run": started_run}


@workflow.defn
async def parent_catches(msg: str) -> dict[str, Any]:
    try:
        await workflow.execute_child_workflow(breaks, msg, id="broken-child")
    except ChildWorkflowError as exc:
        return {"type": exc.cause.type, "message": exc.cause.message, "status": exc.status,
                "workflow_id": exc.workflow_id, "seq": exc.seq, "run_id": exc.run_id}
    return {}


@workflow.defn
async def parent_conflicts(child_id: str) -> dict[str, Any]:
    first = await workflow.start_child_workflow(napper, "first", id=child_id, parent_close_policy="abandon")
    try:
        await workflow.start_child_workflow(napper, "second", id=child_id)
    except ChildWorkflowError as exc:
        return {"cause": exc.cause.type, "message": exc.cause.message, "first": first.run_id,
                "status": exc.status}
    return {}


@workflow.defn
async def parent_leaves(policy: str) -> str:
    child = await workflow.start_child_workflow(napper, policy, id=f"left-{policy}",
                                                parent_close_policy=policy)  # type: ignore[arg-type]
    assert child.run_id is not None
    return child.run_id


@workflow.defn
async def parent_waits(child_id: str) -> str:
    return str(await workflow.execute_child_workflow(napper, "waited", id=child_id, parent_close_policy="abandon"))


@workflow.defn
async def counter(n: int, lengths: list[list[int]]) -> dict[str, Any]:
    seen = [workflow.info().history_length]
    await workflow.sleep(0.01)
    seen.append(workflow.info().history_length)
    if n < 3:
        workflow.continue_as_new(n + 1, [*lengths, seen])
    return {"n": n, "lengths": [*lengths, seen], "continued_from": workflow.info().continued_from,
            "run_id": workflow.info().run_id}


@workflow.defn
async def nap_then_continue(n: int) -> str:
    if n == 0:
        await workflow.sleep(0.1)
        workflow.continue_as_new(1)
    await workflow.sleep(3600)
    return "woke"


@workflow.defn
async def quick(outcome: str) -> str:
    if outcome == "fail":
        raise ApplicationError("asked to fail", type="Asked")
    return outcome


def _replays(fn: Any, workflow_id: str, run_id: str, history: list[Event]) -> None:
    info = WorkflowInfo(workflow_id=workflow_id, run_id=run_id, workflow_type=definition_of(fn).name,
                        queue="default", namespace="default", start_time=history[0].at or datetime.now(UTC))
    assert replay(definition_of(fn), info, history).closed


async def _closed(sql, run_id: str) -> str:
    return await wait_until(lambda: (s := run_status(sql, run_id)) != "running" and s, timeout=15,
                            what=f"run {run_id} to close")


def _runs_of(sql, workflow_id: str) -> list[tuple[str, str, Any]]:
    return [(str(r), s, c and str(c)) for r, s, c in sql(
        "SELECT run_id, status, continued_from FROM cairn.runs WHERE workflow_id = %s ORDER BY run_id",
        (workflow_id,))]


def _leftovers(sql, run_id: str) -> dict[str, int]:
    return {t: sql(f"SELECT count(*) FROM cairn.{t} WHERE run_id = %s", (run_id,))[0][0]
            for t in ("workflow_tasks", "activity_tasks", "timers", "inbox")}


# ---------------------------------------------------------------- child workflows


async def test_child_completes_and_parent_gets_its_result(client, start_worker, sql):
    await start_worker(workflows=[parent_adds, doubler])
    handle = await client.start(parent_adds, 20, id="parent-1")
    out = await handle.result(timeout=20)
    assert out["value"] == 41
    assert out["child_id"] == "parent-1/3"  # <parent id>/<seq of ChildWorkflowScheduled>
    child = sql("SELECT run_id, status, parent_run_id, parent_seq, parent_close_policy FROM cairn.runs "
                "WHERE workflow_id = 'parent-1/3'")
    assert len(child) == 1
    child_run, status, parent_run, parent_seq, policy = child[0]
    assert (status, str(parent_run), parent_seq, policy) == ("completed", handle.run_id, 3, "terminate")
    assert out["child_run"] == str(child_run)

    parent_events = events(sql, handle.run_id)
    scheduled = next(d for s, t, d in parent_events if t == "ChildWorkflowScheduled")
    assert scheduled["workflow_type"] == "doubler"
    assert scheduled["input"] == [20]
    started = next(d for _, t, d in parent_events if t == "ChildWorkflowStarted")
    assert started == {"child_seq": 3, "workflow_id": "parent-1/3", "run_id": str(child_run)}
    done = next(d for _, t, d in parent_events if t == "ChildWorkflowCompleted")
    assert done["result"] == 40
    assert done["run_id"] == str(child_run)
    assert done["status"] == "completed"
    # The child has a history of its own, starting with its input and the parent link.
    child_events = events(sql, str(child_run))
    assert child_events[0][1] == "WorkflowStarted"
    assert child_events[0][2]["parent"] == {"workflow_id": "parent-1", "run_id": handle.run_id, "seq": 3}
    assert child_events[-1][1] == "WorkflowCompleted"

    # describe shows the links both ways.
    d = await handle.describe()
    assert [(c["workflow_id"], c["status"], c["seq"]) for c in d.children] == [("parent-1/3", "completed", 3)]
    cd = await client.get_handle("parent-1/3").describe()
    # The recorded parent history replays with the current code.
    _replays(parent_adds, "parent-1", handle.run_id, await handle.history())
    assert cd.parent is not None
    assert cd.parent["run_id"] == handle.run_id
    assert cd.parent["workflow_id"] == "parent-1"


@workflow.defn
async def fan_out(n: int) -> int:
    handles = [await workflow.start_child_workflow(doubler, i) for i in range(n)]
    return sum(await asyncio.gather(*handles))


async def test_many_children_at_once(client, start_worker, sql):
    await start_worker(workflows=[fan_out, doubler], workflow_concurrency=4)
    await start_worker(workflows=[fan_out, doubler], workflow_concurrency=4)
    handle = await client.start(fan_out, 12, id="fan")
    assert await handle.result(timeout=60) == sum(2 * i for i in range(12))
    assert sql("SELECT count(*), min(status), max(status) FROM cairn.runs WHERE parent_run_id = %s",
               (handle.run_id,)) == [(12, "completed", "completed")]
    types = types_of(sql, handle.run_id)
    assert types.count("ChildWorkflowCompleted") == 12
    assert types.count("ChildWorkflowStarted") == 12
    assert sql("SELECT count(*) FROM cairn.inbox") == [(0,)]


async def test_child_failure_reaches_parent_with_its_cause(client, start_worker, sql):
    await start_worker(workflows=[parent_catches, breaks])
    handle = await client.start(parent_catches, "boom", id="parent-2")
    out = await handle.result(timeout=20)
    child_run = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'broken-child'")[0][0]
    assert out == {"type": "ChildBroke", "message": "boom", "status": "failed", "workflow_id": "broken-child",
                   "seq": 3, "run_id": str(child_run)}
    assert run_status(sql, str(child_run)) == "failed"
    failed = next(d for _, t, d in events(sql, handle.run_id) if t == "ChildWorkflowFailed")
    assert failed["failure"]["type"] == "ChildBroke"
    assert failed["failure"]["details"] == {"why": "boom"}


@workflow.defn
async def parent_reuses(child_id: str) -> dict[str, Any]:
    first = await workflow.execute_child_workflow(doubler, 1, id=child_id)
    try:
        await workflow.start_child_workflow(doubler, 2, id=child_id, id_reuse_policy="reject_duplicate")
    except ChildWorkflowError as exc:
        return {"first": first, "cause": exc.cause.type, "details": exc.cause.details}
    return {}


async def test_child_id_reuse_policy(client, start_worker, sql):
    await start_worker(workflows=[parent_reuses, doubler])
    out = await (await client.start(parent_reuses, "reused-child", id="parent-7")).result(timeout=20)
    first_run = str(sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'reused-child'")[0][0])
    assert out == {"first": 2, "cause": "WorkflowIdReuseRefused",
                   "details": {"run_id": first_run, "status": "completed"}}
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'reused-child'") == [(1,)]


async def test_child_id_conflict(client, start_worker, sql):
    await start_worker(workflows=[parent_conflicts, napper])
    handle = await client.start(parent_conflicts, "taken-id", id="parent-3")
    out = await handle.result(timeout=20)
    assert out["cause"] == "WorkflowAlreadyStarted"
    assert out["first"] in out["message"]
    assert out["status"] == "not_started"
    # One child run only; the refused start wrote nothing; the first child is abandoned, still running.
    assert sql("SELECT count(*), min(status) FROM cairn.runs WHERE workflow_id = 'taken-id'") == [(1, "running")]
    assert "ChildWorkflowStartFailed" in types_of(sql, handle.run_id)


@pytest.mark.parametrize(("policy", "child_status", "child_last"), [
    ("terminate", "terminated", "WorkflowTerminated"),
    ("request_cancel", "cancelled", "WorkflowCancelled"),
    ("abandon", "running", "TimerStarted"),
])
async def test_parent_close_policy(client, start_worker, sql, policy, child_status, child_last):
    await start_worker(workflows=[parent_leaves, napper])
    handle = await client.start(parent_leaves, policy, id=f"leaver-{policy}")
    child_run = await handle.result(timeout=20)
    assert run_status(sql, handle.run_id) == "completed"
    if policy == "abandon":
        await wait_until(lambda: "TimerStarted" in types_of(sql, child_run), what="the child's timer")
        assert sql("SELECT count(*) FROM cairn.inbox WHERE run_id = %s", (child_run,)) == [(0,)]
        assert run_status(sql, child_run) == "running"
    else:
        assert await _closed(sql, child_run) == child_status
        assert _leftovers(sql, child_run) == dict.fromkeys(_leftovers(sql, child_run), 0)
    assert types_of(sql, child_run)[-1] == child_last
    if policy == "terminate":
        # Terminated without running code: no marker, no cancel handling in its history.
        types = types_of(sql, child_run)
        assert "CancelRequested" not in types
        assert types[-2] in ("WorkflowStarted", "TimerStarted")
        reason = events(sql, child_run)[-1][2]["reason"]
        assert handle.run_id in reason
        assert "terminate" in reason


async def test_parent_cancelled_while_awaiting_child_cancels_the_child(client, start_worker, sql):
    await start_worker(workflows=[parent_waits, napper])
    handle = await client.start(parent_waits, "awaited-child", id="parent-4")
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'awaited-child'")[0][0],
                     what="the child run")
    child_run = str(sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'awaited-child'")[0][0])
    await wait_until(lambda: "ChildWorkflowStarted" in types_of(sql, handle.run_id), what="child started")
    await wait_until(lambda: "TimerStarted" in types_of(sql, child_run), what="the child's timer")
    await handle.cancel("stop it all")
    with pytest.raises(WorkflowCancelled):
        await handle.result(timeout=20)
    assert await _closed(sql, child_run) == "cancelled"
    parent_types = types_of(sql, handle.run_id)
    assert parent_types[-3:] == ["CancelRequested", "ChildWorkflowCancelRequested", "WorkflowCancelled"]
    req = next(d for _, t, d in events(sql, child_run) if t == "CancelRequested")
    assert handle.run_id in req["reason"]


@workflow.defn
async def parent_reports_child(child_id: str) -> dict[str, Any]:
    try:
        await workflow.execute_child_workflow(napper, "x", id=child_id)
    except ChildWorkflowError as exc:
        return {"type": exc.cause.type, "message": exc.cause.message, "status": exc.status}
    return {}


async def test_terminating_a_child_or_a_parent(client, start_worker, sql):
    await start_worker(workflows=[parent_reports_child, napper])
    # An operator terminates the child: the parent hears it as a ChildWorkflowError.
    parent = await client.start(parent_reports_child, "doomed-child", id="parent-8")
    await wait_until(lambda: "ChildWorkflowStarted" in types_of(sql, parent.run_id), what="child started")
    await client.get_handle("doomed-child").terminate("operator says so")
    assert await parent.result(timeout=20) == {"type": "WorkflowTerminated", "message": "operator says so",
                                               "status": "terminated"}
    # An operator terminates a parent: its child (policy terminate) is terminated too.
    parent = await client.start(parent_reports_child, "orphan", id="parent-9")
    await wait_until(lambda: "ChildWorkflowStarted" in types_of(sql, parent.run_id), what="child started")
    await parent.terminate("stop")
    child_run = str(sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'orphan'")[0][0])
    assert await _closed(sql, child_run) == "terminated"
    assert types_of(sql, child_run)[-1] == "WorkflowTerminated"


# ---------------------------------------------------------------- continue-as-new


async def test_continue_as_new_chain(client, start_worker, sql):
    await start_worker(workflows=[counter])
    handle = await client.start(counter, 1, [], id="chain-1")
    first_run = handle.run_id
    out = await handle.result(timeout=30)
    runs = _runs_of(sql, "chain-1")
    assert [s for _, s, _ in runs] == ["continued_as_new", "continued_as_new", "completed"]
    assert runs[0][0] == first_run
    assert runs[0][2] is None
    assert runs[1][2] == runs[0][0]
    assert runs[2][2] == runs[1][0]
    assert handle.run_id == runs[2][0]  # the handle followed the chain
    assert out["n"] == 3
    assert out["run_id"] == runs[2][0]
    assert out["continued_from"] == runs[1][0]
    # info().history_length grows within a run and starts over in each new run.
    assert out["lengths"] == [[2, 5]] * 3
    for i, (run_id, _, _) in enumerate(runs):
        evs = events(sql, run_id)
        assert evs[0][0] == 1
        assert evs[0][1] == "WorkflowStarted"
        assert evs[0][2]["input"] == ([1, []] if i == 0 else [i + 1, [[2, 5]] * i])
        if i < 2:
            assert evs[-1][1] == "WorkflowContinuedAsNew"
            assert evs[-1][2]["input"] == [i + 2, [[2, 5]] * (i + 1)]
            assert _leftovers(sql, run_id) == dict.fromkeys(_leftovers(sql, run_id), 0)
    # A handle on the workflow id, or on the first run, gives the chain's result too.
    assert (await client.get_handle("chain-1", first_run).result(timeout=5))["n"] == 3
    assert (await client.get_handle("chain-1").result(timeout=5))["n"] == 3
    for run_id, _, _ in runs:
        _replays(counter, "chain-1", run_id, await client.get_handle("chain-1", run_id).history())
    d = await client.get_handle("chain-1", runs[1][0]).describe()
    assert (d.continued_from, d.continued_to) == (runs[0][0], runs[2][0])


@workflow.defn
async def tagging_counter(n: int) -> dict[str, Any]:
    seen = workflow.search_attributes()
    if n < 2:
        workflow.upsert_search_attributes({"step": n + 1})
        workflow.continue_as_new(n + 1)
    return {"seen": seen}


async def test_continue_as_new_carries_search_attributes_and_memo(client, start_worker, sql):
    await start_worker(workflows=[tagging_counter])
    handle = await client.start(tagging_counter, 0, id="chain-tags", search_attributes={"customer": "acme"},
                                memo={"note": "vip"})
    out = await handle.result(timeout=30)
    # The last run sees the attributes upserted by the run before it, in the same task as
    # its continue-as-new, and the row (what list --where reads) agrees.
    assert out == {"seen": {"customer": "acme", "step": 2}}
    rows = sql("SELECT status, search_attributes, memo FROM cairn.runs WHERE workflow_id = 'chain-tags' "
               "ORDER BY run_id")
    assert [r[0] for r in rows] == ["continued_as_new", "continued_as_new", "completed"]
    assert rows[-1][1:] == ({"customer": "acme", "step": 2}, {"note": "vip"})
    # The second run upserted step 2 too, before it continued as the third.
    found = await client.list(where='customer = "acme" AND step = 2')
    assert [r["status"] for r in found] == ["completed", "continued_as_new"]


# ---------------------------------------------------------------- execution timeout


async def test_execution_timeout_closes_a_waiting_run(client, start_worker, sql):
    await start_worker(workflows=[napper])
    handle = await client.start(napper, "late", id="timeout-1", execution_timeout=1.0)
    assert sql("SELECT seq FROM cairn.timers WHERE run_id = %s ORDER BY seq", (handle.run_id,))[0] == (0,)
    with pytest.raises(WorkflowTimedOutError, match="timed out"):
        await handle.result(timeout=20)
    assert run_status(sql, handle.run_id) == "timed_out"
    types = types_of(sql, handle.run_id)
    # Nothing ran after the timeout: the run's last code-produced event is its timer.
    assert types == ["WorkflowStarted", "WorkflowTaskStarted", "TimerStarted", "WorkflowTimedOut"]
    assert _leftovers(sql, handle.run_id) == dict.fromkeys(_leftovers(sql, handle.run_id), 0)
    failure = sql("SELECT failure FROM cairn.runs WHERE run_id = %s", (handle.run_id,))[0][0]
    assert failure["type"] == "WorkflowTimedOut"
    assert [r["workflow_id"] for r in await client.list(status="timed_out")] == ["timeout-1"]


async def test_execution_timeout_spans_continue_as_new(client, start_worker, sql):
    await start_worker(workflows=[nap_then_continue])
    handle = await client.start(nap_then_continue, 0, id="timeout-2", execution_timeout=1.5)
    with pytest.raises(WorkflowTimedOutError):
        await handle.result(timeout=20)
    runs = _runs_of(sql, "timeout-2")
    assert [s for _, s, _ in runs] == ["continued_as_new", "timed_out"]
    deadlines = sql("SELECT execution_deadline, created_at FROM cairn.runs WHERE workflow_id = 'timeout-2' "
                    "ORDER BY run_id")
    assert deadlines[0][0] == deadlines[1][0]  # inherited, not restarted
    assert deadlines[0][0] == deadlines[0][1] + timedelta(seconds=1.5)
    assert types_of(sql, runs[1][0])[-1] == "WorkflowTimedOut"


async def test_child_times_out_and_parent_sees_it(client, start_worker, sql):
    await start_worker(workflows=[child_with_timeout, napper])
    handle = await client.start(child_with_timeout, id="parent-5")
    assert await handle.result(timeout=20) == {"type": "WorkflowTimedOut", "status": "timed_out"}


@workflow.defn
async def child_with_timeout() -> dict[str, Any]:
    try:
        await workflow.execute_child_workflow(napper, "slow", execution_timeout=0.5)
    except ChildWorkflowError as exc:
        return {"type": exc.cause.type, "status": exc.status}
    return {}


# ---------------------------------------------------------------- id reuse policy


async def test_id_reuse_policies(client, start_worker, sql):
    await start_worker(workflows=[quick])
    await (await client.start(quick, "ok", id="reuse-1")).result(timeout=20)

    before = sql("SELECT count(*) FROM cairn.runs")[0][0]
    with pytest.raises(WorkflowIdReuseRefused) as refused:
        await client.start(quick, "again", id="reuse-1", id_reuse_policy="reject_duplicate")
    assert refused.value.status == "completed"
    assert refused.value.run_id in str(refused.value)
    with pytest.raises(WorkflowIdReuseRefused):
        await client.start(quick, "again", id="reuse-1", id_reuse_policy="allow_duplicate_failed_only")
    # A refused start wrote nothing at all.
    assert sql("SELECT count(*) FROM cairn.runs")[0][0] == before
    assert sql("SELECT count(*) FROM cairn.workflow_tasks")[0][0] == 0

    # The default allows reuse; a failed newest run lets failed-only through.
    failed = await client.start(quick, "fail", id="reuse-1")
    assert await _closed(sql, failed.run_id) == "failed"
    again = await client.start(quick, "ok", id="reuse-1", id_reuse_policy="allow_duplicate_failed_only")
    assert await again.result(timeout=20) == "ok"
    with pytest.raises(WorkflowIdReuseRefused, match="completed"):
        await client.start(quick, "x", id="reuse-1", id_reuse_policy="allow_duplicate_failed_only")
    with pytest.raises(WorkflowIdReuseRefused):
        await client.start(quick, "x", id="reuse-1", id_reuse_policy="reject_duplicate")
    assert [s for _, s, _ in _runs_of(sql, "reuse-1")] == ["completed", "failed", "completed"]
    # A new id is never refused.
    fresh = await client.start(quick, "ok", id="reuse-2", id_reuse_policy="reject_duplicate")
    assert await fresh.result(timeout=20) == "ok"


async def test_bad_lifecycle_options_write_nothing(client, sql):
    from cairn import InputValidationError

    with pytest.raises(InputValidationError, match="id_reuse_policy"):
        await client.start(quick, "x", id="bad-1", id_reuse_policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match="positive"):
        await client.start(quick, "x", id="bad-1", execution_timeout=0)
    with pytest.raises(InputValidationError, match="at most"):
        await client.start(quick, "x", id="bad-1", execution_timeout=1e12)
    assert sql("SELECT count(*) FROM cairn.runs") == [(0,)]
