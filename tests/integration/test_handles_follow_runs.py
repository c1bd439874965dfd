"""Handles after continue-as-new (issue 15, item 7): a handle without an explicit run id
(``client.start``, ``get_handle(id)``) acts on the current run of the chain; one given a
run id stays on that run. Every handle operation and the CLI, with real workers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cairn import InputValidationError, WorkflowCancelled, WorkflowClosed, WorkflowTerminated, workflow
from cairn.cli import main as cli
from support import events, run_status, wait_until

T = 10


@workflow.defn
async def stages(n: int) -> dict[str, Any]:
    """Takes "note" signals; "go" with "next" continues as new (n + 1), anything else ends."""
    notes: list[Any] = []
    workflow.set_signal_handler("note", notes.append)
    workflow.set_query_handler("stage", lambda: {"n": n, "notes": notes})
    if await workflow.wait_signal("go") == "next":
        workflow.continue_as_new(n + 1)
    return {"n": n, "notes": notes}


def _runs(sql: Any, workflow_id: str) -> list[tuple[str, str]]:
    return [(str(r), s) for r, s in sql("SELECT run_id, status FROM cairn.runs WHERE workflow_id = %s "
                                         "ORDER BY run_id", (workflow_id,))]


async def _continue(sql: Any, workflow_id: str, first: str, client: Any) -> str:
    """Makes the run ``first`` continue as new (signalled by run id); returns the next run,
    once its first workflow task is recorded."""
    await client.get_handle(workflow_id, first).signal("go", "next")
    rows = await wait_until(lambda: sql("SELECT run_id FROM cairn.runs WHERE continued_from = %s", (first,)),
                            what="the next run")
    assert run_status(sql, first) == "continued_as_new"
    second = str(rows[0][0])
    await wait_until(lambda: len(events(sql, second)) > 1, what="the next run's first task")
    return second


async def test_a_started_handle_acts_on_the_current_run(client, start_worker, sql):
    await start_worker(workflows=[stages])
    handle = await client.start(stages, 0, id="follow-start")
    first = handle.run_id
    second = await _continue(sql, "follow-start", first, client)
    # Each used to raise WorkflowClosed, or show and answer for the closed first run.
    await handle.signal("note", "a")
    assert handle.run_id == second
    await wait_until(lambda: any(t == "SignalReceived" for _, t, _ in events(sql, second)), what="the signal")
    assert await handle.query("stage", timeout=T) == {"n": 1, "notes": ["a"]}
    d = await handle.describe()
    assert (d.run_id, d.status, d.continued_from) == (second, "running", first)
    assert [(e.seq, e.type) for e in await handle.history()] == [(s, t) for s, t, _ in events(sql, second)]
    await handle.terminate("enough")
    assert [s for _, s in _runs(sql, "follow-start")] == ["continued_as_new", "terminated"]
    with pytest.raises(WorkflowTerminated):
        await handle.result(timeout=T)
    # Retry and reset start from the current run too (the first one is not retryable).
    retried = await handle.retry()
    assert (await retried.describe()).reset_from == {"kind": "retry", "run_id": second, "seq": None,
                                                     "reason": "retry"}


async def test_a_started_handle_resets_and_cancels_the_current_run(client, start_worker, sql):
    await start_worker(workflows=[stages])
    handle = await client.start(stages, 0, id="follow-cancel")
    second = await _continue(sql, "follow-cancel", handle.run_id, client)
    # Used to reset the first run, which refused: the second is open.
    reset = await handle.reset(to_last_task=True, reason="again")
    assert (await reset.describe()).reset_from["run_id"] == second
    assert run_status(sql, second) == "terminated"
    await handle.cancel("stop")  # the newest run of the id: the reset one
    assert handle.run_id == reset.run_id
    with pytest.raises(WorkflowCancelled):
        await reset.result(timeout=T)
    # result() follows continue-as-new from the run it started, not resets (as Temporal's).
    with pytest.raises(WorkflowTerminated):
        await handle.result(timeout=T)


async def test_a_handle_by_workflow_id_follows_after_its_first_use(client, start_worker, sql):
    await start_worker(workflows=[stages])
    first = (await client.start(stages, 0, id="follow-id")).run_id
    by_id = client.get_handle("follow-id")
    assert (await by_id.describe()).run_id == first
    second = await _continue(sql, "follow-id", first, client)
    await by_id.signal("note", "b")  # used to stay on the first run it had resolved
    assert by_id.run_id == second
    await by_id.signal("go", "done")
    assert await by_id.result(timeout=T) == {"n": 1, "notes": ["b"]}


async def test_a_handle_with_a_run_id_stays_on_that_run(client, start_worker, sql):
    await start_worker(workflows=[stages])
    first = (await client.start(stages, 0, id="follow-pinned")).run_id
    pinned = client.get_handle("follow-pinned", first)
    second = await _continue(sql, "follow-pinned", first, client)
    for act in (lambda: pinned.signal("note", "x"), pinned.cancel, pinned.terminate):
        with pytest.raises(WorkflowClosed, match="continued_as_new") as info:
            await act()
        assert info.value.run_id == first
    assert await pinned.query("stage", timeout=T) == {"n": 0, "notes": []}
    d = await pinned.describe()
    assert (d.run_id, d.status, d.continued_to) == (first, "continued_as_new", second)
    assert [e.type for e in await pinned.history()][-1] == "WorkflowContinuedAsNew"
    with pytest.raises(InputValidationError, match="continued_as_new"):
        await pinned.retry()
    await client.get_handle("follow-pinned").signal("go", "done")
    # result() follows the chain to its outcome (as Temporal's), and the handle stays pinned.
    assert await pinned.result(timeout=T) == {"n": 1, "notes": []}
    assert pinned.run_id == first
    assert (await pinned.describe()).run_id == first


async def test_a_started_handle_cancels_and_terminates_only_its_own_chain(client, start_worker, sql):
    await start_worker(workflows=[stages])
    handle = await client.start(stages, 0, id="follow-own")
    first = handle.run_id
    await handle.terminate("first")
    # A retry comes from the started run: the handle terminates it.
    retried = await handle.retry()
    await handle.terminate("retried")
    assert run_status(sql, retried.run_id) == "terminated"
    # A later start of the same id is another execution: cancel and terminate refuse it,
    # as Temporal's (first_execution_run_id); signal, query and describe reach it.
    other = await client.start(stages, 7, id="follow-own")
    for act in (handle.cancel, handle.terminate):
        with pytest.raises(WorkflowClosed, match=f"its run {first} is closed") as info:
            await act()
        assert info.value.run_id == first
    assert run_status(sql, other.run_id) == "running"
    assert (await handle.describe()).run_id == other.run_id
    await other.terminate()


async def test_a_run_that_continues_mid_call_is_followed(client, start_worker, sql):
    """The run continues as new after the handle resolved it, before the signal (or the
    termination) is written: the handle writes nothing there and acts on the next run."""
    await start_worker(workflows=[stages])
    handle = await client.start(stages, 0, id="follow-race")
    first = handle.run_id
    runs: list[str] = []
    write_input, terminate = handle._write_input, handle._terminate

    async def late_write(run_id: str, event_type: str, data: dict[str, Any], **kw: Any) -> bool:
        if run_id == first:
            runs.append(await _continue(sql, "follow-race", first, client))
        return await write_input(run_id, event_type, data, **kw)

    async def late_terminate(run_id: str, reason: str) -> bool:
        if run_id == runs[0]:
            runs.append(await _continue(sql, "follow-race", runs[0], client))
        return await terminate(run_id, reason)

    handle._write_input = late_write  # type: ignore[method-assign]
    handle._terminate = late_terminate  # type: ignore[method-assign]
    await handle.signal("note", "late")
    assert handle.run_id == runs[0]
    signalled = await wait_until(lambda: [d for _, t, d in events(sql, runs[0]) if t == "SignalReceived"],
                                 what="the signal in the second run")
    assert signalled == [{"name": "note", "payload": "late"}]
    await handle.terminate("late")
    assert [s for _, s in _runs(sql, "follow-race")] == ["continued_as_new", "continued_as_new", "terminated"]
    assert handle.run_id == runs[1]


async def cairn(db_url: str, *args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", db_url, *args])


async def test_the_cli_acts_on_the_current_run_unless_given_a_run_id(client, db_url, start_worker, sql):
    await start_worker(workflows=[stages])
    first = (await client.start(stages, 0, id="follow-cli")).run_id
    second = await _continue(sql, "follow-cli", first, client)
    ran = await cairn(db_url, "signal", "follow-cli", "note", "--input", '"c"')
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.strip() == f"signalled note to follow-cli (run {second})"
    ran = await cairn(db_url, "signal", "follow-cli", "note", "--input", '"old"', "--run-id", first)
    assert ran.exit_code == 2, ran.stderr
    assert f"is closed (its run {first} is continued_as_new)" in ran.stderr
    await wait_until(lambda: any(t == "SignalReceived" for _, t, _ in events(sql, second)), what="the signal")
    ran = await cairn(db_url, "query", "follow-cli", "stage")
    assert (ran.exit_code, ran.stdout.strip()) == (0, '{"n": 1, "notes": ["c"]}'), ran.stderr
    ran = await cairn(db_url, "query", "follow-cli", "stage", "--run-id", first)
    assert (ran.exit_code, ran.stdout.strip()) == (0, '{"n": 0, "notes": []}'), ran.stderr
    ran = await cairn(db_url, "terminate", "follow-cli", "--run-id", first)
    assert ran.exit_code == 2, ran.stderr
    assert "is closed" in ran.stderr
    ran = await cairn(db_url, "terminate", "follow-cli")
    assert ran.exit_code == 0, ran.stderr
    assert _runs(sql, "follow-cli") == [(first, "continued_as_new"), (second, "terminated")]
