"""Batch operations through the Python API (client.start_batch, preview_batch, count):
terminate, cancel, signal, reset and retry every run a filter matches, once per run, with
bad input refused before anything is written, and a batch resumed by a worker."""

from __future__ import annotations

import pytest

from cairn import Client, InputValidationError, workflow
from cairn.client.batches import Counts
from support import running_worker, wait_until


@workflow.defn
async def waiter(tag: str) -> str:
    got = await workflow.wait_signal("go")
    return f"{tag}:{got}"


async def _start(client: Client, n: int, group: str, prefix: str | None = None) -> list[str]:
    runs = []
    for i in range(n):
        h = await client.start(waiter, f"t{i}", id=f"{prefix or group}-{i}", queue="batches",
                               search_attributes={"group": group})
        runs.append(h.run_id)
    return runs


def _count_events(sql, run_id: str, etype: str) -> int:
    """Events of a type in the run's history and still in its inbox."""
    return sql("SELECT (SELECT count(*) FROM cairn.history WHERE run_id = %(r)s AND type = %(t)s)"
               " + (SELECT count(*) FROM cairn.inbox WHERE run_id = %(r)s AND type = %(t)s)",
               {"r": run_id, "t": etype})[0][0]


def _nothing_written(sql) -> None:
    assert sql("SELECT count(*) FROM cairn.batches") == [(0,)]
    assert sql("SELECT count(*) FROM cairn.batch_targets") == [(0,)]


async def test_preview_and_count_write_nothing(client, sql):
    runs = await _start(client, 5, "a")
    await _start(client, 2, "b")
    await client.get_handle("a-0").terminate("early")
    before = sql("SELECT count(*) FROM cairn.inbox")
    p = await client.preview_batch("terminate", where="group = 'a'", reason="why")
    assert (p.matched, p.by_status, p.open) == (5, {"running": 4, "terminated": 1}, 4)
    assert [s["run_id"] for s in p.sample] == sorted(runs)  # run-id order, as the batch acts
    assert p.to_json()["dry_run"] is True
    assert await client.count(where="group = 'a'") == 5
    assert await client.count(where="group = 'a'", status="running") == 4
    assert await client.count() == 7
    _nothing_written(sql)
    assert sql("SELECT count(*) FROM cairn.inbox") == before


@pytest.mark.parametrize(("kind", "kwargs", "message"), [
    ("terminate", {"where": "group = 'a"}, "unterminated string"),
    ("terminate", {"where": "   "}, "needs a filter"),
    ("explode", {"where": "group = 'a'"}, "kind is one of"),
    ("signal", {"where": "group = 'a'"}, "needs the signal's name"),
    ("signal", {"where": "group = 'a'", "signal": ""}, "signal name must be a non-empty string"),
    ("signal", {"where": "group = 'a'", "signal": "go", "signal_args": [float("nan")]}, "cannot be stored as JSON"),
    ("signal", {"where": "group = 'a'", "signal": "go", "signal_args": "abc"}, "sequence"),
    ("terminate", {"where": "group = 'a'", "signal": "go"}, "takes no signal"),
    ("reset", {"where": "group = 'a'"}, "needs a reset point"),
    ("reset", {"where": "group = 'a'", "reset_to": 0}, "'first', 'last' or a positive seq"),
    ("reset", {"where": "group = 'a'", "reset_to": "middle"}, "'first', 'last' or a positive seq"),
    ("cancel", {"where": "group = 'a'", "reset_to": "last"}, "takes no reset point"),
    ("retry", {"where": "group = 'a'", "reason": "x"}, "takes no reason"),
    ("terminate", {"where": "group = 'a'", "reason": "x" * 1001}, "at most 1000 characters"),
    ("terminate", {"where": "group = 'a'", "reason": "a\x00b"}, "NUL"),
])
async def test_bad_input_writes_nothing(client, sql, kind, kwargs, message):
    await _start(client, 1, "a")
    for call in (client.start_batch, client.preview_batch):
        with pytest.raises(InputValidationError, match=message):
            await call(kind, **kwargs)
    _nothing_written(sql)


async def test_bad_handles(client):
    with pytest.raises(InputValidationError, match="is not a batch id"):
        client.get_batch_handle("nope")
    missing = client.get_batch_handle("0190f0f0-0000-7000-8000-000000000000")
    with pytest.raises(InputValidationError, match="no batch"):
        await missing.describe()
    with pytest.raises(InputValidationError, match="no batch"):
        await missing.cancel()


async def test_terminate_batch_acts_once_per_run(client, sql):
    runs = await _start(client, 7, "a")
    await _start(client, 2, "b")
    await client.get_handle("a-1").terminate("by hand")
    await client.get_handle("a-2").cancel()  # still open: cancel is only a request
    seen: list[Counts] = []
    batch = await client.start_batch("terminate", where="group = 'a'", reason="cleanup")
    d = await batch.wait(on_progress=seen.append, chunk_size=2)
    assert (d.status, d.matched, d.done, d.skipped, d.failed, d.pending) == ("completed", 7, 6, 1, 0, 0)
    assert {(g.outcome, g.detail, g.count) for g in d.outcomes} == {("done", "", 6),
                                                                    ("skipped", "already terminated", 1)}
    # progress after each chunk of 2, ending at the total
    assert [c.processed for c in seen] == [2, 4, 6, 7]
    for run_id in runs:
        assert _count_events(sql, run_id, "WorkflowTerminated") == 1
    reasons = {r[0] for r in sql("SELECT data->>'reason' FROM cairn.history WHERE type = 'WorkflowTerminated'")}
    assert reasons == {"cleanup", "by hand"}
    assert sql("SELECT count(*) FROM cairn.runs WHERE status = 'running'") == [(2,)]  # group b untouched
    # waiting again, or a second batch over the same runs, acts on nothing
    assert (await batch.wait()).done == 6
    again = await (await client.start_batch("terminate", where="group = 'a'")).wait()
    assert (again.done, again.skipped) == (0, 7)
    assert sql("SELECT count(*) FROM cairn.history WHERE type = 'WorkflowTerminated'") == [(7,)]
    targets = await batch.targets(outcome="skipped")
    assert [(t.workflow_id, t.detail) for t in targets] == [("a-1", "already terminated")]
    listed = await client.list_batches()
    assert [b.id for b in listed] == [again.id, batch.id]


async def test_cancel_and_signal_batches(client, sql):
    runs = await _start(client, 4, "a")
    await client.get_handle("a-3").terminate()
    d = await (await client.start_batch("cancel", where="group = 'a'", reason="stop")).wait()
    assert (d.done, d.skipped) == (3, 1)
    for run_id in runs[:3]:
        assert _count_events(sql, run_id, "CancelRequested") == 1
    rows = sql("SELECT data FROM cairn.inbox WHERE type = 'CancelRequested'")
    assert {r[0]["reason"] for r in rows} == {"stop"}

    d = await (await client.start_batch("signal", where="group = 'a'", signal="go", signal_args=[{"n": 1}])).wait()
    assert (d.done, d.skipped, d.params["signal"]) == (3, 1, "go")
    for run_id in runs[:3]:
        assert _count_events(sql, run_id, "SignalReceived") == 1
    assert {r[0]["payload"]["n"] for r in sql("SELECT data FROM cairn.inbox WHERE type = 'SignalReceived'")} == {1}


async def test_signal_batch_reaches_the_workflows(client, db_url):
    await _start(client, 3, "a")
    d = await (await client.start_batch("signal", where="group = 'a'", signal="go", signal_args=["yes"])).wait()
    assert d.done == 3
    async with running_worker(db_url, workflows=[waiter], queues=["batches"]):
        assert [await client.get_handle(f"a-{i}").result(timeout=30) for i in range(3)] == [
            "t0:yes", "t1:yes", "t2:yes"]


async def test_reset_and_retry_batches(client, db_url, sql):
    old = await _start(client, 3, "a")
    async with running_worker(db_url, workflows=[waiter], queues=["batches"]):
        await wait_until(lambda: sql("SELECT count(*) FROM cairn.history WHERE type = 'WorkflowTaskStarted'"
                                     )[0][0] >= 3, what="each run's first workflow task")
    never_ran = (await _start(client, 1, "a", prefix="fresh"))[0]  # no workflow task yet: nothing to reset to
    reset = await (await client.start_batch("reset", where="group = 'a'", reset_to="first", reason="redo")).wait()
    assert (reset.done, reset.failed) == (3, 1)
    assert [(g.outcome, g.detail) for g in reset.outcomes if g.outcome == "failed"] == [
        ("failed", "the run has no workflow task yet: there is nothing to reset to")]
    done = await client.get_batch_handle(reset.id).targets(outcome="done")
    assert sorted(t.run_id for t in done) == sorted(old)
    for t in done:
        assert sql("SELECT status FROM cairn.runs WHERE run_id = %s", (t.run_id,)) == [("terminated",)]
        assert sql("SELECT status, reset_from->>'reason' FROM cairn.runs WHERE run_id = %s", (t.new_run_id,)) == [
            ("running", "redo")]
    assert sql("SELECT status FROM cairn.runs WHERE run_id = %s", (never_ran,)) == [("running",)]

    # retry: the terminated old runs have open successors (skipped); terminate them, retry
    retry = await (await client.start_batch("retry", where="group = 'a' AND Status = 'terminated'")).wait()
    assert (retry.done, retry.skipped) == (0, 3)
    assert {g.detail for g in retry.outcomes} == {"its workflow id has an open run"}
    await (await client.start_batch("terminate", where="group = 'a'")).wait()
    retry = await (await client.start_batch("retry", where="WorkflowId = 'a-0' OR WorkflowId = 'fresh-0'")).wait()
    # a-0 has two terminated runs: the first retried one opens the id, the second is skipped
    assert (retry.matched, retry.done, retry.skipped) == (3, 2, 1)
    assert sql("SELECT count(*) FROM cairn.runs WHERE status = 'running'") == [(2,)]
    async with running_worker(db_url, workflows=[waiter], queues=["batches"]):
        d = await (await client.start_batch("signal", where="Status = 'running'", signal="go",
                                            signal_args=["again"])).wait()
        assert d.done == 2
        assert await client.get_handle("a-0").result(timeout=30) == "t0:again"


async def test_cancel_a_batch(client, sql):
    await _start(client, 3, "a")
    batch = await client.start_batch("terminate", where="group = 'a'")
    assert await batch.cancel() == "cancelled"
    assert await batch.cancel() == "cancelled"
    d = await batch.wait()
    assert (d.status, d.done, d.pending) == ("cancelled", 0, 3)
    assert sql("SELECT count(*) FROM cairn.runs WHERE status = 'running'") == [(3,)]
    done = await (await client.start_batch("terminate", where="group = 'a'")).wait()
    assert await client.get_batch_handle(done.id).cancel() == "completed"


async def test_a_worker_executes_a_batch_nobody_waits_for(client, db_url, sql):
    await _start(client, 5, "a")
    batch = await client.start_batch("signal", where="group = 'a'", signal="go", signal_args=["w"])
    async with running_worker(db_url, workflows=[waiter], queues=["batches"]):
        for i in range(5):
            assert await client.get_handle(f"a-{i}").result(timeout=30) == f"t{i}:w"
    d = await batch.describe()
    assert (d.status, d.done, d.executing) == ("completed", 5, False)
    assert d.executor is not None
    assert d.executor.endswith("(worker)")
    assert sql("SELECT count(*) FROM cairn.history WHERE type = 'SignalReceived'") == [(5,)]
