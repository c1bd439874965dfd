"""Workflow updates on real Postgres with in-process workers: results and errors, the
validator (a rejection records nothing), async handlers, idempotent update ids,
update-with-start, all_handlers_finished, the sync client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from cairn import (
    ApplicationError,
    InputValidationError,
    WithStartWorkflowOperation,
    WorkflowClosed,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
    WorkflowUpdateTimeout,
    activity,
    workflow,
)
from cairn.sync import SyncClient
from support import events, types_of

from .test_messages_cli import assert_error, cairn

T = 10


@activity.defn
async def double(n: int) -> int:
    return 2 * n


@workflow.defn
async def counter(start: int) -> dict[str, Any]:
    """Updates: "add" (validated: positive numbers only), "add_slowly" (async: an activity
    and a timer), "fail" (raises an ApplicationError), "finish" (ends the run after the
    handlers finish)."""
    state: dict[str, Any] = {"total": start, "done": False}

    def add(n: int) -> int:
        state["total"] += n
        return int(state["total"])

    def positive(n: int) -> None:
        if n <= 0:
            raise ApplicationError(f"{n} is not positive", type="NotPositive", details={"n": n})

    async def add_slowly(n: int) -> int:
        doubled = await workflow.execute_activity(double, n, start_to_close_timeout=T)
        await workflow.sleep(0.2)
        state["total"] += doubled
        return int(state["total"])

    def fail() -> None:
        raise ApplicationError("no", type="Refused", details=[1, 2])

    def finish() -> str:
        state["done"] = True
        return "finishing"

    workflow.set_update_handler("add", add, validator=positive)
    workflow.set_update_handler("add_slowly", add_slowly)
    workflow.set_update_handler("fail", fail)
    workflow.set_update_handler("finish", finish)
    workflow.set_query_handler("total", lambda: state["total"])
    await workflow.wait_condition(lambda: state["done"])
    await workflow.wait_condition(workflow.all_handlers_finished)
    return state


def _updates(sql, run_id: str) -> list[tuple[Any, ...]]:
    return sql("SELECT update_id, status, result, failure IS NOT NULL FROM cairn.updates WHERE run_id = %s "
               "ORDER BY created_at", (run_id,))


async def test_update_returns_the_handler_result_and_is_recorded(client, start_worker, sql):
    await start_worker(workflows=[counter], activities=[double])
    handle = await client.start(counter, 10, id="upd-1")
    assert await handle.execute_update("add", 5, id="u1") == 15
    assert await handle.execute_update("add", 1) == 16
    assert await handle.query("total") == 16
    accepted = [d for _, t, d in events(sql, handle.run_id) if t == "UpdateAccepted"]
    completed = [d for _, t, d in events(sql, handle.run_id) if t == "UpdateCompleted"]
    assert accepted[0] == {"update_id": "u1", "name": "add", "args": [5]}
    assert completed[0] == {"update_id": "u1", "result": 15}
    assert len(accepted) == len(completed) == 2
    assert await handle.execute_update("finish") == "finishing"
    assert await handle.result(timeout=T) == {"total": 16, "done": True}


async def test_rejected_update_records_nothing(client, start_worker, sql):
    await start_worker(workflows=[counter], activities=[double])
    handle = await client.start(counter, 0, id="upd-rej")
    await handle.execute_update("add", 1)
    before = types_of(sql, handle.run_id)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("add", -3, id="neg")
    err = info.value
    assert err.rejected
    assert err.type == "NotPositive"
    assert err.details == {"n": -3}
    assert err.cause is not None
    assert err.cause.message == "-3 is not positive"
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("nope")
    assert info.value.rejected
    assert info.value.type == "UnknownUpdate"
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("add", 1, 2)
    assert info.value.rejected
    assert info.value.type == "InvalidArguments"
    # Rejected updates leave no event at all, not even a workflow task marker.
    assert types_of(sql, handle.run_id) == before
    assert sql("SELECT count(*) FROM cairn.inbox") == [(0,)]
    assert await handle.query("total") == 1
    assert ("neg", "rejected", None, True) in _updates(sql, handle.run_id)


async def test_handler_error_fails_the_update_not_the_run(client, start_worker, sql):
    await start_worker(workflows=[counter], activities=[double])
    handle = await client.start(counter, 0, id="upd-fail")
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("fail")
    assert not info.value.rejected
    assert info.value.type == "Refused"
    assert info.value.details == [1, 2]
    assert "Refused: no" in str(info.value)
    assert await handle.execute_update("add", 2) == 2


async def test_async_handler_waits_and_start_update_returns_at_acceptance(client, start_worker, sql):
    await start_worker(workflows=[counter], activities=[double])
    handle = await client.start(counter, 1, id="upd-async")
    update = await handle.start_update("add_slowly", 4, wait_for_stage=WorkflowUpdateStage.ACCEPTED)
    assert update.id
    assert await update.result(timeout=T) == 9
    # run finishes only once handlers are done: finish while a slow one runs
    slow = await handle.start_update("add_slowly", 1)
    assert await handle.execute_update("finish") == "finishing"
    assert await handle.result(timeout=T) == {"total": 11, "done": True}
    assert await slow.result() == 11


async def test_same_update_id_is_applied_once(client, start_worker, sql):
    await start_worker(workflows=[counter], activities=[double])
    handle = await client.start(counter, 0, id="upd-idem")
    results = await asyncio.gather(*(handle.execute_update("add", 7, id="same") for _ in range(3)))
    assert results == [7, 7, 7]
    assert await handle.execute_update("add", 7, id="same") == 7
    assert await handle.query("total") == 7
    assert list(types_of(sql, handle.run_id)).count("UpdateAccepted") == 1


async def test_update_with_start(client, start_worker, sql):
    await start_worker(workflows=[counter], activities=[double])
    result = await client.execute_update_with_start(counter, 100, id="upd-ws", update="add", update_args=[1])
    assert result == 101
    # the run exists now: the same call updates it
    assert await client.execute_update_with_start(counter, 100, id="upd-ws", update="add", update_args=[2]) == 103
    handle = client.get_handle("upd-ws")
    await handle.execute_update("finish")
    assert (await handle.result(timeout=T))["total"] == 103
    assert len(sql("SELECT 1 FROM cairn.runs WHERE workflow_id = 'upd-ws'")) == 1


async def test_update_waits_for_a_worker_with_a_timeout(client, start_worker, sql):
    handle = await client.start(counter, 0, id="upd-wait")
    with pytest.raises(WorkflowUpdateTimeout):
        await handle.execute_update("add", 1, id="late", timeout=0.5)
    await start_worker(workflows=[counter], activities=[double])
    assert await handle.execute_update("add", 1, id="late", timeout=T) == 1


async def test_bad_update_input_and_closed_runs_write_nothing(client, start_worker, sql):
    handle = await client.start(counter, 0, id="upd-bad")
    for bad in ({"name": ""}, {"name": "add", "id": "has space"}, {"name": "add", "args": (float("nan"),)}):
        with pytest.raises(InputValidationError):
            await handle.execute_update(bad["name"], *bad.get("args", ()), id=bad.get("id"))
    assert sql("SELECT count(*) FROM cairn.updates") == [(0,)]
    await handle.terminate()
    with pytest.raises(WorkflowClosed):
        await handle.execute_update("add", 1)
    assert sql("SELECT count(*) FROM cairn.updates") == [(0,)]


async def test_run_closing_before_the_handler_finishes_fails_the_update(client, start_worker, sql):
    await start_worker(workflows=[counter], activities=[double])
    handle = await client.start(counter, 0, id="upd-close")
    update = await handle.start_update("add_slowly", 1)
    await handle.terminate()
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update.result(timeout=T)
    assert info.value.type == "WorkflowClosed"


async def test_sync_client_updates(db_url, start_worker):
    await start_worker(workflows=[counter], activities=[double])

    def script() -> list[Any]:
        with SyncClient(db_url) as client:
            handle = client.start(counter, 3, id="upd-sync")
            first = handle.execute_update("add", 2)
            update = handle.start_update("add", 1)
            return [first, update.result(timeout=T),
                    client.execute_update_with_start(counter, 0, id="upd-sync", update="add", update_args=[4])]

    assert await asyncio.to_thread(script) == [5, 6, 10]


async def test_cairn_update_cli(client, db_url, start_worker, sql):
    await start_worker(workflows=[counter], activities=[double])
    handle = await client.start(counter, 1, id="upd-cli")
    ran = await cairn(db_url, "update", "upd-cli", "add", "--input", "2")
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.strip() == "3"
    ran = await cairn(db_url, "update", "upd-cli", "add", "--input", "4", "--id", "cli-1", "--json")
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout) == {"workflow_id": "upd-cli", "run_id": handle.run_id, "update": "add",
                                      "update_id": "cli-1", "result": 7}
    ran = await cairn(db_url, "update", "upd-cli", "add", "--input", "4", "--id", "cli-1")  # same id: same outcome
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.strip() == "7"
    assert_error(await cairn(db_url, "update", "upd-cli", "add", "--input", "-1"), 2, "rejected", "NotPositive")
    assert_error(await cairn(db_url, "update", "upd-cli", "fail"), 1, "Refused: no")
    assert_error(await cairn(db_url, "update", "upd-cli", "add", "--input", "[NaN]"), 2, "NaN")
    assert_error(await cairn(db_url, "update", "no-such-workflow", "add"), 2, "no-such-workflow")
    assert await handle.query("total") == 7


async def test_stages_and_a_handle_on_an_earlier_update(client, start_worker, sql):
    handle = await client.start(counter, 0, id="upd-stages")
    # No worker yet: ADMITTED returns once the request is written.
    admitted = await handle.start_update("add", 3, id="early", wait_for_stage=WorkflowUpdateStage.ADMITTED)
    assert sql("SELECT status FROM cairn.updates WHERE update_id = 'early'") == [("requested",)]
    with pytest.raises(WorkflowUpdateTimeout):
        await admitted.result(timeout=0.3)
    await start_worker(workflows=[counter], activities=[double])
    later = client.get_handle("upd-stages", run_id=handle.run_id).get_update_handle("early")
    assert await later.result(timeout=T) == 3
    assert await admitted.result(timeout=T) == 3
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await client.get_handle("upd-stages", run_id=handle.run_id).get_update_handle("never-sent").result()
    assert info.value.type == "UnknownUpdate"


async def test_result_type_types_the_result(client, start_worker):
    await start_worker(workflows=[counter], activities=[double])
    handle = await client.start(counter, 0, id="upd-typed")
    value = await handle.execute_update("add", 2, result_type=float)
    assert value == 2.0
    assert isinstance(value, float)
    update = await handle.start_update("add", 1, result_type=float, wait_for_stage=WorkflowUpdateStage.COMPLETED)
    assert await update.result() == 3.0
    with pytest.raises(InputValidationError, match="not a str"):
        await handle.execute_update("add", 1, result_type=str)


async def test_with_start_workflow_operation(client, start_worker, sql):
    """Temporal's form of update-with-start: the operation gives the run's handle after the
    call, also when the update was rejected; a start that could not happen raises from both."""
    await start_worker(workflows=[counter], activities=[double])
    op = WithStartWorkflowOperation(counter, 10, id="upd-op")
    assert await client.execute_update_with_start_workflow("add", 5, start_workflow_operation=op) == 15
    handle = await op.workflow_handle()
    assert await handle.query("total") == 15
    rejected = WithStartWorkflowOperation(counter, 0, id="upd-op")  # the open run takes it
    with pytest.raises(WorkflowUpdateFailedError):
        await client.execute_update_with_start_workflow("add", -1, start_workflow_operation=rejected)
    assert (await rejected.workflow_handle()).run_id == handle.run_id
    bad = WithStartWorkflowOperation(counter, "not a number", id="upd-op-bad")
    with pytest.raises(InputValidationError):
        await client.start_update_with_start_workflow("add", 1, start_workflow_operation=bad)
    with pytest.raises(InputValidationError):
        await bad.workflow_handle()
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'upd-op-bad'") == [(0,)]
    with pytest.raises(InputValidationError, match="use_existing"):
        WithStartWorkflowOperation(counter, 1, id="x", id_conflict_policy="fail")
