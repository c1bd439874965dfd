"""Workflows and activities annotated ``-> NoReturn`` / ``-> Never`` (issue 15, item 5): they
import, register and run end to end, on real Postgres and a real worker."""

from __future__ import annotations

from typing import Never, NoReturn

import pytest

from cairn import ActivityError, ApplicationError, RetryPolicy, WorkflowFailure, activity, workflow
from support import run_status

T = 10


@activity.defn
async def always_refuses(why: str) -> NoReturn:
    raise ApplicationError(why, type="Refused", non_retryable=True)


@workflow.defn
async def endless(n: int) -> Never:
    """Continues as new until its third run, which gives up by raising."""
    if n < 2:
        workflow.continue_as_new(n + 1)
    try:
        await workflow.execute_activity(always_refuses, f"run {n}", start_to_close_timeout=T,
                                        retry_policy=RetryPolicy(maximum_attempts=1))
    except ActivityError as exc:
        raise ApplicationError(f"gave up: {exc.cause.message}", type="GaveUp") from None


async def test_a_never_returning_workflow_runs_end_to_end(client, start_worker, sql):
    await start_worker(workflows=[endless], activities=[always_refuses])
    handle = await client.start(endless, 0, id="never-returns")
    with pytest.raises(WorkflowFailure) as info:
        await handle.result(timeout=30)
    assert (info.value.type, info.value.details["message"]) == ("GaveUp", "gave up: run 2")
    statuses = [s for (s,) in sql("SELECT status FROM cairn.runs WHERE workflow_id = 'never-returns' "
                                   "ORDER BY run_id")]
    assert statuses == ["continued_as_new", "continued_as_new", "failed"]
    assert run_status(sql, handle.run_id) == "failed"
    # The registry has the workflow's input schema; a NoReturn type has no result schema.
    assert (await client.start_target("endless")).input_schema["prefixItems"] == [{"type": "integer"}]
