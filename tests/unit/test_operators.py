"""Instance-level search attributes and seeds, the reset plan, and the filter parser (no database)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import pytest

from cairn import InputValidationError, InvalidFilter, workflow
from cairn.client.operators import plan_reset, task_seqs
from cairn.engine import history as h
from cairn.engine.history import SIGNAL_RECEIVED, Event
from cairn.engine.instance import WorkflowInstance, replay
from cairn.store.filters import parse_filter
from cairn.visibility import check_search_attributes, tokenize

from .harness import OTHER_RUN_ID, RUN_ID, Driver, completed, fired, make_info


@workflow.defn
async def upserting(n: int) -> list:
    seen = [workflow.search_attributes()]
    workflow.upsert_search_attributes({"step": 1, "gone": None})
    seen.append(workflow.search_attributes())
    await workflow.sleep(10)
    workflow.upsert_search_attributes({"step": 2})
    seen.append(workflow.search_attributes())
    return [seen, str(workflow.uuid4())]


def started(data: dict) -> Event:
    return Event(1, h.WORKFLOW_STARTED, {"workflow_type": "upserting", "input": [1], "queue": "default",
                                         "workflow_id": "wf-1", **data})


def test_upserts_are_commands_and_replay():
    d = Driver(upserting, 1)
    d.instance = WorkflowInstance(d.definition, d.info, [1], {"search_attributes": {"gone": "x", "keep": True}})
    d.history[0] = started({"search_attributes": {"gone": "x", "keep": True}})
    cmds = d.activate()
    assert [(c.type, c.data) for c in cmds] == [
        (h.UPSERT_SEARCH_ATTRIBUTES, {"search_attributes": {"step": 1, "gone": None}}),
        (h.TIMER_STARTED, cmds[1].data)]
    d.activate(fired(cmds[1].seq), after=10)
    seen, _ = d.result
    assert seen == [{"gone": "x", "keep": True}, {"keep": True, "step": 1}, {"keep": True, "step": 2}]
    # Replay matches the recorded upserts and rebuilds the same values.
    inst = replay(d.definition, d.info, d.history)
    assert inst.search_attributes == {"keep": True, "step": 2}
    # A changed upsert is a divergence.
    changed = [e if e.type != h.UPSERT_SEARCH_ATTRIBUTES or e.data["search_attributes"].get("step") != 2
               else Event(e.seq, e.type, {"search_attributes": {"step": 3}}) for e in d.history]
    with pytest.raises(Exception, match="UpsertSearchAttributes"):
        replay(d.definition, d.info, changed)


def test_seed_comes_from_workflow_started_when_present():
    info = make_info("upserting", run_id=RUN_ID)
    own = WorkflowInstance(workflow.definition_of(upserting), info, [1])
    carried = WorkflowInstance(workflow.definition_of(upserting), info, [1], {"seed": OTHER_RUN_ID})
    reference = WorkflowInstance(workflow.definition_of(upserting), make_info("upserting", run_id=OTHER_RUN_ID), [1])
    assert carried.uuid4() == reference.uuid4()
    assert own.uuid4() != WorkflowInstance(workflow.definition_of(upserting), info, [1],
                                           {"seed": OTHER_RUN_ID}).uuid4()


@workflow.defn
async def pending_work() -> None:
    long_timer = asyncio.ensure_future(workflow.sleep(3600))
    a = workflow.start_activity("far", 1, start_to_close_timeout=5)
    b = workflow.start_activity("near", 2, start_to_close_timeout=5)
    await b
    await workflow.sleep(1)
    await asyncio.gather(a, long_timer)


def _history() -> Driver:
    d = Driver(pending_work)
    first = d.activate()  # 2: task; 3 far, 4 near, 5 long timer
    kinds = {c.data.get("activity_type") or c.type: c.seq for c in first}
    d.activate(completed(kinds["near"], "ok"), after=1)  # 6 task, 7 completed, 8 short timer
    short = d.history[-1].seq
    d.activate(fired(short), after=1)  # 9 task, 10 fired
    d.history.append(Event(d.last_seq + 1, SIGNAL_RECEIVED, {"name": "poke", "payload": 1}))
    return d


def test_plan_reset():
    d = _history()
    assert task_seqs(d.history) == [2, 6, 9]
    plan = plan_reset(d.history, RUN_ID, 6)
    assert [e.seq for e in plan.copied] == [1, 2, 3, 4, 5]
    assert plan.copied[0].data["seed"] == RUN_ID
    assert plan.inbox == [(h.ACTIVITY_COMPLETED, d.history[6].data), (SIGNAL_RECEIVED, {"name": "poke", "payload": 1})]
    # "near" is answered by the re-delivered input; "far" and the long timer are pending.
    assert [a["activity_type"] for a in plan.activities] == ["far"]
    assert plan.activities[0]["options"] == d.history[2].data["options"]
    assert [t["seq"] for t in plan.timers] == [5]
    assert plan.timers[0]["fire_at"] == d.history[4].data["fire_at"]

    last = plan_reset(d.history, RUN_ID, None, reapply_signals=False, pending_signals=[{"name": "x"}])
    assert last.seq == 9
    # The signal right after the timer's firing is an input of task 9 itself: always re-delivered.
    assert last.inbox == [(h.TIMER_FIRED, {"timer_seq": 8}), (SIGNAL_RECEIVED, {"name": "poke", "payload": 1})]
    # From task 6, it is a later signal: re-applied only if asked.
    assert plan_reset(d.history, RUN_ID, 6, reapply_signals=False).inbox == [(h.ACTIVITY_COMPLETED,
                                                                               d.history[6].data)]
    assert [a["activity_type"] for a in last.activities] == ["far"]
    assert [t["seq"] for t in last.timers] == [5]
    with_pending = plan_reset(d.history, RUN_ID, 9, pending_signals=[{"name": "x"}])
    assert with_pending.inbox == [*last.inbox, (SIGNAL_RECEIVED, {"name": "x"})]

    first = plan_reset(d.history, RUN_ID, 2)
    assert [e.seq for e in first.copied] == [1]
    assert (first.inbox, first.activities, first.timers) == ([(SIGNAL_RECEIVED, {"name": "poke", "payload": 1})],
                                                             [], [])
    # A seed already carried over (a reset of a reset) is kept.
    d.history[0] = Event(1, h.WORKFLOW_STARTED, {**d.history[0].data, "seed": OTHER_RUN_ID})
    assert plan_reset(d.history, RUN_ID, 2).copied[0].data["seed"] == OTHER_RUN_ID


@pytest.mark.parametrize("seq", [1, 3, 7, 10, 100])
def test_plan_reset_refuses_other_seqs(seq):
    with pytest.raises(InputValidationError, match=r"valid seqs: 2, 6, 9$"):
        plan_reset(_history().history, RUN_ID, seq)


def test_plan_reset_without_tasks():
    with pytest.raises(InputValidationError, match="no workflow task"):
        plan_reset([started({})], RUN_ID, None)


def test_filters_are_parametrised():
    f = parse_filter("""customer = 'x''; DROP TABLE cairn.runs; --' AND WorkflowId STARTS_WITH "a%_" """)
    assert "DROP" not in f.sql
    assert "x'; DROP TABLE cairn.runs; --" in [v.obj.get("customer") if hasattr(v, "obj") else v
                                                for v in f.params.values()]
    assert "a%_" in f.params.values()
    # Only fixed text and %(wN)s placeholders: every quote in the SQL is one of ours.
    assert set(f.params) == {f"w{i}" for i in range(len(f.params))}


def test_filter_errors_name_the_column():
    with pytest.raises(InvalidFilter) as err:
        parse_filter('a = 1 AND b = 2 DROP TABLE x')
    assert err.value.column == 17
    assert "unexpected token 'DROP' at column 17" in str(err.value)
    assert [t.kind for t in tokenize("a >= -1.5e3 OR b IN ('x', \"y\")")] == [
        "name", "op", "number", "kw", "name", "kw", "(", "string", ",", "string", ")", "end"]


def test_datetime_values_are_stored_in_one_form():
    got = check_search_attributes({"due": datetime(2024, 5, 1, 14, 0, tzinfo=UTC).astimezone()})
    assert got == {"due": "2024-05-01T14:00:00.000000+00:00"}
    assert check_search_attributes({"ok": True, "n": 3, "f": 1.5, "tags": ("a",)}) == {
        "ok": True, "n": 3, "f": 1.5, "tags": ["a"]}
    assert check_search_attributes({"gone": None}, allow_null=True) == {"gone": None}


@workflow.defn
async def cancels_and_waits() -> str:
    handle = workflow.start_activity("slow", start_to_close_timeout=60,
                                     cancellation_type="wait_cancellation_completed")
    await workflow.sleep(5)
    handle.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await handle
    await workflow.sleep(5)
    return "done"


def test_reset_tells_the_new_run_of_a_cancellation_that_had_not_completed():
    d = Driver(cancels_and_waits)
    first = d.activate()
    d.activate(fired(first[1].seq), after=5)  # cancels the activity: it waits for ActivityCancelled
    assert [e.type for e in d.history].count(h.ACTIVITY_CANCEL_REQUESTED) == 1
    # Reset to a (later) task that has not happened yet: everything so far is copied.
    nxt = d.history[-1].seq + 1
    plan = plan_reset([*d.history, Event(nxt, h.WORKFLOW_TASK_STARTED, {"time": 0})], RUN_ID, None)
    assert plan.seq == nxt
    # Not re-created (it was cancelled), but its completed cancellation is in the new inbox.
    assert plan.activities == []
    assert (h.ACTIVITY_CANCELLED, {"activity_seq": first[0].seq, "attempt": 0, "started": False}) in plan.inbox


@workflow.defn
async def two_children() -> str:
    first = await workflow.start_child_workflow("kid", id="kid-1")
    second = await workflow.start_child_workflow("kid", id="kid-2")
    try:
        return str(await first) + str(await second)
    except Exception as exc:  # ChildWorkflowError
        return f"lost: {exc.cause.type}"  # type: ignore[attr-defined]


def test_reset_tells_the_new_run_its_unfinished_children_are_lost():
    d = Driver(two_children)
    (first,) = d.activate()
    (second,) = d.activate((h.CHILD_WORKFLOW_STARTED, {"child_seq": first.seq, "workflow_id": "kid-1",
                                                       "run_id": OTHER_RUN_ID}))
    # Reset to the task that got the first child's start: the second child's start is in
    # the old history only after the reset point.
    d.activate((h.CHILD_WORKFLOW_STARTED, {"child_seq": second.seq, "workflow_id": "kid-2", "run_id": RUN_ID}))
    reset_seq = task_seqs(d.history)[1]
    plan = plan_reset(d.history, RUN_ID, reset_seq)
    kinds = [(t, data["child_seq"], (data.get("failure") or {}).get("type")) for t, data in plan.inbox]
    # The task's own input (first child started), then: the first child lost to the new run.
    assert kinds == [(h.CHILD_WORKFLOW_STARTED, first.seq, None), (h.CHILD_WORKFLOW_FAILED, first.seq, "ParentReset")]
    # A replay of the new run's history with that inbox gives the workflow a clear failure.
    new = Driver(two_children)
    new.activate()
    (again,) = new.activate(*plan.inbox)  # the second child was not started before the reset point
    assert (again.type, again.data["workflow_id"]) == (h.CHILD_WORKFLOW_SCHEDULED, "kid-2")
    new.activate((h.CHILD_WORKFLOW_STARTED, {"child_seq": again.seq, "workflow_id": "kid-2", "run_id": RUN_ID}))
    assert new.result == "lost: ParentReset"
