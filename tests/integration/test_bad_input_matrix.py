"""The bad-input matrix: every bad input gets a clear error (exit 2 in the CLI) and writes
NOTHING (the row count of every cairn.* table is the same before and after).

Rows: malformed JSON, pydantic failures (every field listed), unknown workflow types,
NaN/Infinity, NUL and lone surrogates, nesting and size limits (workflow input, signal
payload, query args, activity args and results), workflow ids (empty, long, control
characters), SQL in ids and filters, timeouts <= 0, max attempts < 1, signal/cancel/
terminate on unknown or closed runs, bad DSNs (password masked), history length limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pydantic import BaseModel, ValidationError

from cairn import (
    ActivityError,
    Client,
    InputValidationError,
    RetryPolicy,
    WorkflowClosed,
    WorkflowNotFound,
    activity,
    options,
    payloads,
    workflow,
)
from cairn.cli import main as cli
from cairn.engine import history
from cairn.engine.history import Event
from cairn.errors import CairnError, DatabaseError, HistoryTooLong
from support import events, wait_until

# Past the payload store's limit (0022; lowered here from 64 MiB to keep the test light).
STORED_LIMIT = 4 * payloads.MAX_PAYLOAD_BYTES
BIG = "x" * (STORED_LIMIT + 10)


@pytest.fixture(autouse=True)
def _stored_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payloads, "MAX_STORED_PAYLOAD_BYTES", STORED_LIMIT)
SECRET = "s3cretPw_canary"


class Customer(BaseModel):
    name: str
    age: int
    email: str


@workflow.defn
async def typed(n: int, customer: Customer, tags: list[str]) -> int:
    return n


@workflow.defn
async def echo(value: Any = None) -> Any:
    return value


@workflow.defn
async def parked() -> str:
    await workflow.wait_condition(lambda: False)
    return "never"


@activity.defn
async def huge_result() -> str:
    return BIG


@activity.defn
async def takes(value: Any) -> str:
    return "ok"


@workflow.defn
async def returns_huge() -> str:
    try:
        return await workflow.execute_activity(huge_result, start_to_close_timeout=10)
    except ActivityError as exc:
        return f"{exc.cause.type}: {exc.cause} attempts={exc.attempts}"


@workflow.defn
async def sends_huge_arg() -> str:
    try:
        await workflow.execute_activity(takes, BIG, start_to_close_timeout=10)
    except InputValidationError as exc:
        return f"refused: {exc}"
    return "sent"


def counts(sql: Callable[..., Any]) -> dict[str, int]:
    """Row counts of every table in the cairn schema."""
    tables = [r[0] for r in sql("SELECT tablename FROM pg_tables WHERE schemaname = 'cairn' ORDER BY 1")]
    return {t: sql(f'SELECT count(*) FROM cairn."{t}"')[0][0] for t in tables}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# ---------------------------------------------------------------- the library (client API)

Case = Callable[[Client], Awaitable[Any]]

API_CASES: list[tuple[str, Case, type[BaseException], tuple[str, ...]]] = [
    ("pydantic_every_field", lambda c: c.start(typed, "x", {"name": 5}, "notalist"), InputValidationError,
     ("'n'", "'customer'", "name:", "age: Field required", "email: Field required", "'tags'")),
    ("too_few_args", lambda c: c.start(typed), InputValidationError, ("takes 3 argument(s), got 0",)),
    ("registered_schema_every_error", lambda c: c.start("typed", "x", {"name": 5}, "notalist"),
     InputValidationError, ("at 0:", "at 1:", "at 2:")),
    ("nan", lambda c: c.start(echo, float("nan")), InputValidationError, ("nan", "finite")),
    ("infinity", lambda c: c.start(echo, {"a": float("inf")}), InputValidationError, ("inf",)),
    ("nul_in_string", lambda c: c.start(echo, "a\x00b"), InputValidationError, ("NUL",)),
    ("nul_in_key", lambda c: c.start(echo, {"a\x00": 1}), InputValidationError, ("NUL",)),
    ("lone_surrogate", lambda c: c.start(echo, "a\ud800"), InputValidationError, ("surrogate",)),
    ("too_deep", lambda c: c.start(echo, nested(payloads.MAX_PAYLOAD_DEPTH + 1)), InputValidationError,
     ("deeper than 64",)),
    ("way_too_deep", lambda c: c.start(echo, nested(5000)), InputValidationError, ("deeper",)),
    ("too_big", lambda c: c.start(echo, BIG), InputValidationError, ("stored payload limit",
                                                                         "CAIRN_MAX_STORED_PAYLOAD_BYTES")),
    ("empty_id", lambda c: c.start(echo, id=""), InputValidationError, ("non-empty",)),
    ("blank_id", lambda c: c.start(echo, id="   "), InputValidationError, ("non-empty",)),
    ("long_id", lambda c: c.start(echo, id="x" * 1001), InputValidationError, ("longer than 1000",)),
    ("newline_id", lambda c: c.start(echo, id="a\nb"), InputValidationError, ("U+000A",)),
    ("escape_id", lambda c: c.start(echo, id="a\x1b[31mb"), InputValidationError, ("U+001B",)),
    ("c1_id", lambda c: c.start(echo, id="a\x85b"), InputValidationError, ("U+0085",)),
    ("del_id", lambda c: c.start(echo, id="a\x7fb"), InputValidationError, ("U+007F",)),
    ("nul_id", lambda c: c.start(echo, id="a\x00b"), InputValidationError, ("U+0000",)),
    ("zero_timeout", lambda c: c.start(echo, execution_timeout=0), InputValidationError, ("positive",)),
    ("negative_timeout", lambda c: c.start(echo, execution_timeout=-5), InputValidationError, ("positive",)),
    ("bad_queue", lambda c: c.start(echo, queue=""), InputValidationError, ("queue",)),
    ("sql_filter", lambda c: c.list(where="x = 1; DROP TABLE cairn.runs"), InputValidationError, ()),
    ("sql_filter_comment", lambda c: c.list(where="customer = 'a' -- DROP"), InputValidationError, ()),
    ("signal_unknown", lambda c: c.get_handle("nobody").signal("s", 1), WorkflowNotFound, ("nobody",)),
    ("cancel_unknown", lambda c: c.get_handle("nobody").cancel(), WorkflowNotFound, ("nobody",)),
    ("terminate_unknown", lambda c: c.get_handle("nobody").terminate(), WorkflowNotFound, ("nobody",)),
    ("query_unknown", lambda c: c.get_handle("nobody").query("q"), WorkflowNotFound, ("nobody",)),
    ("update_unknown", lambda c: c.get_handle("nobody").execute_update("u"), WorkflowNotFound, ("nobody",)),
    ("update_with_start_bad_name", lambda c: c.execute_update_with_start(echo, 1, id="uws", update=""),
     InputValidationError, ("update name",)),
    ("bad_run_id", lambda c: asyncio.sleep(0, c.get_handle("x", run_id="'; DROP TABLE cairn.runs; --")),
     InputValidationError, ("not a run id",)),
]


@pytest.fixture
async def registered(start_worker: Any) -> Any:
    """A worker serving the matrix' workflows (fills the type registry)."""
    return await start_worker(workflows=[typed, echo, parked, returns_huge, sends_huge_arg],
                              activities=[huge_result, takes])


@pytest.mark.parametrize(("name", "call", "error", "fragments"), API_CASES, ids=[c[0] for c in API_CASES])
async def test_api_bad_input_writes_nothing(client, registered, sql, name, call, error, fragments):
    before = counts(sql)
    with pytest.raises(error) as caught:
        await call(client)
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in {caught.value}"
    assert counts(sql) == before


async def test_messages_to_a_running_run_bad_payloads_write_nothing(client, registered, sql):
    handle = await client.start(parked, id="parked")
    await wait_until(lambda: any(t == "WorkflowTaskStarted" for _, t, _ in events(sql, handle.run_id)))
    before = counts(sql)
    for call, fragment in [
        (lambda: handle.signal("s", BIG), "stored payload limit"),
        (lambda: handle.signal("s", nested(100)), "deeper"),
        (lambda: handle.signal("s", float("nan")), "finite"),
        (lambda: handle.signal("s\x00", 1), "NUL"),
        (lambda: handle.signal("", 1), "signal name"),
        (lambda: handle.query("q", BIG), "stored payload limit"),
        (lambda: handle.query("q", "a\ud800"), "surrogate"),
        (lambda: handle.query("q", timeout=0), "positive"),
        (lambda: handle.query("q", timeout=-1), "positive"),
        (lambda: handle.execute_update("u", BIG), "stored payload limit"),
        (lambda: handle.execute_update("u", nested(100)), "deeper"),
        (lambda: handle.execute_update("u", float("nan")), "finite"),
        (lambda: handle.execute_update("u\x00"), "NUL"),
        (lambda: handle.execute_update(""), "update name"),
        (lambda: handle.execute_update("u", id=""), "update id"),
        (lambda: handle.execute_update("u", id="a\nb"), "control character"),
        (lambda: handle.execute_update("u", timeout=-1), "positive"),
        (lambda: handle.start_update("u", wait_for_stage=2), "WorkflowUpdateStage"),
    ]:
        with pytest.raises(InputValidationError, match=fragment):
            await call()
        assert counts(sql) == before


async def test_closed_runs_refuse_signal_cancel_terminate(client, registered, sql):
    handle = await client.start(echo, 1, id="done")
    assert await handle.result(timeout=20) == 1
    before = counts(sql)
    for call in (lambda: handle.signal("s", 1), handle.cancel, handle.terminate):
        with pytest.raises(WorkflowClosed, match="is closed"):
            await call()
    assert counts(sql) == before


async def test_sql_in_ids_and_filter_values_is_stored_literally(client, registered, sql):
    evil = "x'); DROP TABLE cairn.runs; --"
    tables = counts(sql).keys()
    handle = await client.start(echo, evil, id=evil, search_attributes={"customer": "'; DELETE FROM cairn.runs; --"})
    assert await handle.result(timeout=20) == evil
    assert sql("SELECT workflow_id FROM cairn.runs WHERE run_id = %s", (handle.run_id,)) == [(evil,)]
    assert [r["workflow_id"] for r in await client.list(where='customer = "\'; DELETE FROM cairn.runs; --"')] == [evil]
    assert await client.list(where='customer = "nobody\' OR 1=1 --"') == []
    assert (await client.get_handle(evil).describe()).status == "completed"
    assert counts(sql).keys() == tables  # every table still there
    assert sql("SELECT count(*) FROM cairn.runs")[0][0] == 1


async def test_activity_payload_limits(client, registered, sql):
    # A result too big to record fails the activity for good (no retries), with a clear error.
    handle = await client.start(returns_huge, id="huge-result")
    out = await handle.result(timeout=30)
    assert out.startswith("ResultNotRecordable"), out
    assert "over the stored payload limit" in out
    failed = [d for _, t, d in events(sql, handle.run_id) if t == "ActivityFailed"]
    assert len(failed) == 1
    assert "attempts=1" in out  # non-retryable: one attempt only
    # Too-big activity arguments are refused in the workflow, before anything is scheduled.
    handle = await client.start(sends_huge_arg, id="huge-arg")
    assert (await handle.result(timeout=30)).startswith("refused: ")
    assert not [t for _, t, _ in events(sql, handle.run_id) if t == "ActivityScheduled"]


def test_payload_warning_below_the_limit(caplog):
    with caplog.at_level(logging.WARNING, logger="cairn.limits"):
        payloads.to_payload("y" * (payloads.WARN_PAYLOAD_BYTES + 10))
    assert "every replay reads it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cairn.limits"):
        payloads.to_payload("y" * 100)
    assert caplog.text == ""


def test_retry_policy_attempts_and_intervals():
    assert RetryPolicy(maximum_attempts=0).next_delay(10_000, "E") is not None  # 0: unlimited
    assert RetryPolicy(maximum_attempts=1).next_delay(1, "E") is None
    for bad in ({"maximum_attempts": -1}, {"initial_interval": 0}, {"backoff_coefficient": 0.5},
                {"maximum_attempts": "many"}):
        with pytest.raises(ValidationError):
            RetryPolicy(**bad)
    with pytest.raises(InputValidationError, match="positive"):
        options.seconds(0)


def test_history_length_limit(caplog):
    def batch(first: int, n: int, closing: bool = False) -> list[Event]:
        out = [Event(first + i, "TimerStarted", {}) for i in range(n)]
        if closing:
            out.append(Event(first + n, "WorkflowContinuedAsNew", {}))
        return out

    assert history.check_history_length(batch(10, 5), "w", "r", limit=100, warn=50) is None
    with caplog.at_level(logging.WARNING, logger="cairn.limits"):
        assert history.check_history_length(batch(60, 5), "w", "r", limit=100, warn=50) is None
    assert "continue-as-new advised" in caplog.text
    err = history.check_history_length(batch(98, 5), "w", "r", limit=100, warn=50)
    assert isinstance(err, HistoryTooLong)
    assert "continue-as-new advised" in str(err)
    # The way out is always open: a task that continues as new (or completes) is recorded.
    assert history.check_history_length(batch(98, 5, closing=True), "w", "r", limit=100, warn=50) is None


@workflow.defn
async def chatty(n: int) -> int:
    for _ in range(n):
        await workflow.sleep(0.01)
    return n


async def test_history_limit_fails_the_task_with_advice(client, db_url, sql, start_worker, monkeypatch):
    monkeypatch.setattr(history, "MAX_HISTORY_EVENTS", 12)
    monkeypatch.setattr(history, "WARN_HISTORY_EVENTS", 6)
    await start_worker(workflows=[chatty])
    handle = await client.start(chatty, 50, id="chatty")
    row = await wait_until(lambda: sql("SELECT last_error FROM cairn.workflow_tasks WHERE run_id = %s "
                                       "AND last_error IS NOT NULL", (handle.run_id,)), timeout=20)
    assert "continue-as-new advised" in row[0][0]["message"]
    assert sql("SELECT max(seq) FROM cairn.history WHERE run_id = %s", (handle.run_id,))[0][0] <= 12
    assert (await handle.describe()).workflow_task["last_error"]["type"] == "HistoryTooLong"


# ---------------------------------------------------------------- the CLI (exit 2, nothing written)


async def cairn(db_url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(CliRunner(env=env).invoke, cli, ["--database-url", db_url, *args])


CLI_CASES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("malformed_json", ("start", "echo", "--input", '{"a": 1,\n "b": }'), ("not valid JSON", "line 2 column")),
    ("nan_json", ("start", "echo", "--input", "[NaN]"), ("NaN",)),
    ("infinity_json", ("start", "echo", "--input", '{"a": -Infinity}'), ("Infinity",)),
    ("nul_json", ("start", "echo", "--input", '["a\\u0000"]'), ("NUL",)),
    ("surrogate_json", ("start", "echo", "--input", '["\\ud800"]'), ("surrogate",)),
    ("deep_json", ("start", "echo", "--input", "[" * 100 + "]" * 100), ("deeper",)),
    ("very_deep_json", ("start", "echo", "--input", "[" * 100_000 + "]" * 100_000), ("deep",)),
    ("schema_every_error", ("start", "typed", "--input", '["x", {"name": 5}, "notalist"]'),
     ("at 0:", "at 1:", "at 2:")),
    ("empty_id", ("start", "echo", "--input", "1", "--id", ""), ("non-empty",)),
    ("control_id", ("start", "echo", "--input", "1", "--id", "a\x1bb"), ("U+001B",)),
    ("long_id", ("start", "echo", "--input", "1", "--id", "i" * 1001), ("longer than 1000",)),
    ("zero_timeout", ("start", "echo", "--execution-timeout", "0"), ("execution-timeout",)),
    ("negative_timeout", ("start", "echo", "--execution-timeout", "-1"), ("execution-timeout",)),
    ("sql_filter", ("list", "--where", "1=1; DROP TABLE cairn.runs"), ()),
    ("signal_unknown", ("signal", "nobody", "s"), ("nobody",)),
    ("cancel_unknown", ("cancel", "nobody"), ("nobody",)),
    ("terminate_unknown", ("terminate", "nobody"), ("nobody",)),
    ("signal_bad_json", ("signal", "nobody", "s", "--input", "{"), ("not valid JSON", "line 1 column 2")),
]


@pytest.mark.parametrize(("name", "args", "fragments"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
async def test_cli_bad_input_exits_2_and_writes_nothing(db_url, registered, sql, name, args, fragments):
    before = counts(sql)
    ran = await cairn(db_url, *args)
    assert ran.exit_code == 2, f"exit {ran.exit_code}: {ran.stdout} {ran.stderr} {ran.exception!r}"
    assert ran.stderr.startswith("error: ") or "Error:" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr + ran.stdout
    for fragment in fragments:
        assert fragment in ran.stderr, f"{fragment!r} not in {ran.stderr!r}"
    assert counts(sql) == before


async def test_cli_closed_run_exits_2(client, db_url, registered, sql):
    handle = await client.start(echo, 1, id="closed")
    await handle.result(timeout=20)
    before = counts(sql)
    for args in (("signal", "closed", "s"), ("cancel", "closed"), ("terminate", "closed")):
        ran = await cairn(db_url, *args)
        assert ran.exit_code == 2, (args, ran.stderr)
        assert "is closed" in ran.stderr
    assert counts(sql) == before


# ---------------------------------------------------------------- bad DSNs: the password never shows

BAD_DSNS = [
    ("refused", f"postgresql://postgres:{SECRET}@127.0.0.1:1/postgres", 1),
    ("bad_port", f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/db", 1),
    ("bad_param", f"postgresql://postgres:{SECRET}@127.0.0.1/db?bogus=1", 2),
    ("bad_escape", f"postgresql://postgres:{SECRET}%ZZ@127.0.0.1/db", 2),
    ("keywords", f"host=127.0.0.1 port=1 user=postgres password={SECRET}", 1),
    ("keywords_malformed", f"host=127.0.0.1 password={SECRET} oops", 2),
]


@pytest.mark.parametrize(("name", "url", "code"), BAD_DSNS, ids=[d[0] for d in BAD_DSNS])
async def test_bad_dsn_masks_the_password(name, url, code, caplog):
    with caplog.at_level(logging.DEBUG), pytest.raises(CairnError) as caught:
        await Client.connect(url)
    assert SECRET not in str(caught.value)
    assert isinstance(caught.value, DatabaseError | InputValidationError)
    for args in (("list",), ("db", "status"), ("db", "migrate")):
        ran = await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", url, *args])
        assert ran.exit_code == code, (args, ran.exit_code, ran.stderr, ran.exception)
        assert ran.stderr.startswith("error: "), ran.stderr
        assert SECRET not in ran.stdout + ran.stderr
    ran = await asyncio.to_thread(CliRunner(env={"CAIRN_DATABASE_URL": url}).invoke, cli, ["list"])
    assert ran.exit_code == code
    assert SECRET not in ran.stdout + ran.stderr
    assert SECRET not in caplog.text


def test_log_records_are_redacted(caplog):
    from cairn.store import db

    db.remember_secret(f"postgresql://u:{SECRET}@h/d")
    with caplog.at_level(logging.INFO):
        for name in ("psycopg.pool", "cairn.worker"):
            logging.getLogger(name).warning("error connecting to %s: %s", f"postgresql://u:{SECRET}@h/d", SECRET)
    assert caplog.records
    assert SECRET not in caplog.text


def test_redact_forms():
    from cairn.store import db

    assert db.redact("postgresql://u:pw@h/d") == "postgresql://u:***@h/d"
    assert db.redact("host=h password=pw user=u") == "host=h password=*** user=u"
    assert db.redact("host=h password='p w' user=u") == "host=h password=*** user=u"
    db.remember_secret(f"postgresql://u:{SECRET}@h/d")
    assert SECRET not in db.redact(f'invalid percent-encoded token: "{SECRET}%ZZ"')
