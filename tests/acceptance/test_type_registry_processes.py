"""Worker processes on one queue with disjoint types, and ``cairn start`` against the
per-queue registry (issue 15, B8-B10): each task runs on a worker that registered its type,
none is failed for want of one, a type nobody serves waits (and describe says so), and a
start may precede every worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import registry_flows
from acceptance_support import cairn_cli, run_status, start_runs

from cairn import Worker
from support import query, wait_for

pytestmark = pytest.mark.acceptance


def results(db_url: str, workflow_ids: list[str]) -> dict[str, object]:
    rows = query(db_url, """
        SELECT r.workflow_id, h.data -> 'result' FROM cairn.runs r JOIN cairn.history h USING (run_id)
        WHERE r.workflow_id = ANY(%s) AND h.type = 'WorkflowCompleted'""", (workflow_ids,))
    return dict(rows)


def test_workers_on_one_queue_run_only_the_types_they_registered(db_url, workers):
    # Before any worker: the start is accepted with a one-line warning, and the run waits (B10).
    ran = cairn_cli("start", "split", "--input", "0", "--id", "early", db_url=db_url)
    assert ran.code == 0, ran.err
    assert ran.err.strip() == ("warning: no worker has registered workflow type 'split' on queue 'default' yet; "
                               "the run waits for one")
    assert run_status(db_url, "early") == "running"
    ran = cairn_cli("start", "needs_nothing_known", "--id", "no-input", db_url=db_url)  # no --input: no arguments
    assert ran.code == 0, ran.err
    assert query(db_url, """SELECT h.data -> 'input' FROM cairn.history h JOIN cairn.runs r USING (run_id)
                            WHERE r.workflow_id = 'no-input'""") == [([],)]

    a = workers("a", module="registry_a")  # split, needs_c; act_a
    # act_b has no worker yet: a run waits at it, its attempt untouched (a used to claim it
    # and fail it with ActivityNotRegistered, burning attempts).
    wait_for("early to wait at act_b",
             lambda: query(db_url, "SELECT activity_type, attempt FROM cairn.activity_tasks") == [("act_b", 0)],
             procs=(a,))
    ran = cairn_cli("describe", "early", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["unserved"] == [{
        "kind": "activity", "type": "act_b", "queue": "default", "last_worker": None, "last_heartbeat": None,
        "message": "no live worker serves activity type 'act_b' on queue 'default' "
                   "(no worker has registered it there)"}]
    ran = cairn_cli("describe", "early", db_url=db_url)
    assert "no live worker serves activity type 'act_b' on queue 'default'" in ran.out

    b = workers("b", module="registry_b")  # other_kind; act_b
    splits = [f"split-{i}" for i in range(6)]
    others = [f"other-{i}" for i in range(6)]
    start_runs(db_url, registry_flows.split, [(w, i) for i, w in enumerate(splits)])
    start_runs(db_url, registry_flows.other_kind, [(w, i) for i, w in enumerate(others)])
    everything = ["early", *splits, *others]
    wait_for("every run to complete", lambda: len(results(db_url, everything)) == len(everything), procs=(a, b))

    done = results(db_url, everything)
    assert [done[w] for w in ["early", *splits]] == [{"a": a.pid, "b": b.pid}] * (1 + len(splits))
    assert [done[w] for w in others] == [b.pid] * len(others)
    # Each workflow task ran on the worker of its type; no attempt failed or was burnt.
    markers = query(db_url, """
        SELECT r.workflow_type, h.data ->> 'worker' FROM cairn.history h JOIN cairn.runs r USING (run_id)
        WHERE h.type = 'WorkflowTaskStarted' GROUP BY 1, 2 ORDER BY 1""")
    assert markers == [("other_kind", "b"), ("split", "a")]
    assert query(db_url, "SELECT count(*) FROM cairn.history WHERE type = 'ActivityFailed'") == [(0,)]
    assert query(db_url, """SELECT DISTINCT (data ->> 'attempt')::int FROM cairn.history
                            WHERE type = 'ActivityCompleted'""") == [(1,)]
    for w in (a, b):
        assert "ActivityNotRegistered" not in w.log(), w.log()
        assert "has no workflow type" not in w.log(), w.log()

    # An activity type nobody serves: the run waits and describe says so, until a worker for it starts.
    start_runs(db_url, registry_flows.needs_c, [("c1", 1)])
    wait_for("c1 to wait at act_c",
             lambda: query(db_url, "SELECT activity_type, attempt FROM cairn.activity_tasks") == [("act_c", 0)],
             procs=(a, b))
    ran = cairn_cli("describe", "c1", db_url=db_url)
    assert "no live worker serves activity type 'act_c' on queue 'default'" in ran.out
    c = workers("c", module="registry_c")
    wait_for("c1 to complete", lambda: results(db_url, ["c1"]) == {"c1": c.pid}, procs=(a, b, c))


def register(db_url: str, workflow: Callable[..., object], queue: str) -> None:
    """Registers a workflow type on a queue, as a worker does when it starts."""

    async def go() -> None:
        async with Worker(db_url, workflows=[workflow], queues=[queue], poll_interval=0.2):
            pass

    asyncio.run(go())


def test_cairn_start_picks_the_queue_and_its_schema(db_url):
    register(db_url, registry_flows.shared_int, "q1")
    register(db_url, registry_flows.shared_text, "q2")  # last: it used to win for every queue
    nothing = query(db_url, "SELECT count(*) FROM cairn.runs")

    # Several queues serve the type: refused, naming them, nothing written (B8).
    ran = cairn_cli("start", "shared", "--input", "5", db_url=db_url)
    assert ran.code == 2, ran.err
    assert "registered on several queues (q1, q2)" in ran.err
    # Each queue's own schema.
    ran = cairn_cli("start", "shared", "--input", '"five"', "--queue", "q1", db_url=db_url)
    assert ran.code == 2, ran.err
    assert "input for workflow 'shared' is invalid" in ran.err
    assert query(db_url, "SELECT count(*) FROM cairn.runs") == nothing
    ran = cairn_cli("start", "shared", "--input", "5", "--queue", "q1", "--id", "on-q1", db_url=db_url)
    assert ran.code == 0, ran.err
    ran = cairn_cli("start", "shared", "--input", '"five"', "--queue", "q2", "--id", "on-q2", db_url=db_url)
    assert ran.code == 0, ran.err
    assert query(db_url, "SELECT workflow_id, queue FROM cairn.runs ORDER BY 1") == [("on-q1", "q1"), ("on-q2", "q2")]

    # One queue serves the type: the start goes there, and says so.
    register(db_url, registry_flows.needs_c, "q3")
    ran = cairn_cli("start", "needs_c", "--input", "1", "--id", "to-q3", db_url=db_url)
    assert ran.code == 0, ran.err
    assert "on queue q3, the one queue it is registered on" in ran.out
    assert query(db_url, "SELECT queue FROM cairn.runs WHERE workflow_id = 'to-q3'") == [("q3",)]
