"""Values Postgres cannot store (NUL characters, lone surrogates) in ids, inputs and results.

Python strings may hold them, JSON and Postgres text may not. A start must reject them as
InputValidationError (writing nothing, leaving a caller's transaction usable); a result that
cannot be recorded must fail visibly instead of hanging or hot-looping."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from cairn import ActivityError, InputValidationError, RetryPolicy, activity, workflow
from support import wait_until


@workflow.defn
async def echo_wf(text: str) -> str:
    return text


def _runs(sql) -> int:
    return sql("SELECT count(*) FROM cairn.runs")[0][0]


UNSTORABLE_STARTS: list[tuple[str, dict[str, str], str]] = [
    ("NUL in id", {"id": "order\x00-1"}, "ok"),
    ("NUL in queue", {"queue": "q\x00"}, "ok"),
    ("NUL in argument", {}, "nul\x00inside"),
    ("surrogate in id", {"id": "surrogate-\udc80"}, "ok"),
    ("surrogate in argument", {}, "surrogate-\udc80"),
]


async def test_unstorable_start_is_an_input_validation_error(client, sql):
    wrong = []
    for case, kwargs, arg in UNSTORABLE_STARTS:
        try:
            await client.start(echo_wf, arg, **kwargs)
            wrong.append(f"{case}: accepted")
        except InputValidationError:
            pass
        except Exception as exc:
            wrong.append(f"{case}: {type(exc).__name__}: {exc}")
        assert _runs(sql) == 0, case
    assert wrong == []


async def test_unstorable_argument_does_not_poison_caller_transaction(client, sql, db_url):
    sql("CREATE TABLE public.notes (body text)")
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await conn.execute("INSERT INTO public.notes VALUES ('kept')")
        with pytest.raises(InputValidationError):
            await client.start(echo_wf, "nul\x00inside", conn=conn)
        # Rejected before touching the database: the caller's transaction carries on.
        await conn.execute("INSERT INTO public.notes VALUES ('also kept')")
        await conn.commit()
    assert sql("SELECT body FROM public.notes ORDER BY body") == [("also kept",), ("kept",)]
    assert _runs(sql) == 0


@activity.defn
async def returns_nul() -> str:
    return "a\x00b"


@workflow.defn
async def call_returns_nul() -> dict[str, Any]:
    try:
        await workflow.execute_activity(returns_nul, start_to_close_timeout=30,
                                        retry_policy=RetryPolicy(maximum_attempts=1))
    except ActivityError as e:
        return {"cause_type": e.cause.type, "message": e.cause.message}
    return {}


async def test_unstorable_activity_result_fails_the_attempt(client, start_worker):
    """The attempt must be recorded as failed with a payload error, not left leased until
    its lease runs out (then reported as WorkerLost and, by default, retried for ever)."""
    await start_worker(workflows=[call_returns_nul], activities=[returns_nul], lease_seconds=2.0)
    handle = await client.start(call_returns_nul, id="nul-result")
    out = await handle.result(timeout=20)
    assert out["cause_type"] != "WorkerLost", out


@workflow.defn
async def returns_nul_wf() -> str:
    return "a\x00b"


async def test_unstorable_workflow_result_is_reported(client, start_worker):
    """A workflow task whose outcome cannot be written must show up as a failed workflow task
    (with its error, backed off) or a failed run, not retry invisibly every poll."""
    await start_worker(workflows=[returns_nul_wf])
    handle = await client.start(returns_nul_wf, id="nul-wf-result")

    async def reported():
        d = await handle.describe()
        if d.status == "failed":
            return d
        task = d.workflow_task
        return d if task and task["failures"] >= 1 and task["last_error"] else None

    await wait_until(reported, timeout=3, what="the unwritable outcome to be reported")
