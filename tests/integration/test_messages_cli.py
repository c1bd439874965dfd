"""`cairn signal` and `cairn query` through click, against a real database and a real
in-process worker: exit codes (0 ok, 2 bad input, 1 runtime), output, what is written."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from click.testing import CliRunner, Result

from cairn.cli import main as cli
from support import events, wait_until

from .test_messages import T, collector, mailbox, shout


async def cairn(db_url: str, *args: str) -> Result:
    """Runs one CLI command in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", db_url, *args])


def assert_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, f"exit {result.exit_code}, want {code}: {result.stdout} {result.stderr}"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


def signals(sql: Any, run_id: str) -> list[dict[str, Any]]:
    return [d for _, t, d in events(sql, run_id) if t == "SignalReceived"]


async def test_cairn_signal(client, db_url, start_worker, sql, tmp_path):
    await start_worker(workflows=[collector])
    handle = await client.start(collector, 2, id="cli-sig")
    ran = await cairn(db_url, "signal", "cli-sig", "item", "--input", '{"n": 1}')
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.strip() == f"signalled item to cli-sig (run {handle.run_id})"
    (tmp_path / "two.json").write_text('[2, "two"]')
    ran = await cairn(db_url, "signal", "cli-sig", "item", "--input", f"@{tmp_path / 'two.json'}", "--json")
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout) == {"workflow_id": "cli-sig", "run_id": handle.run_id, "signal": "item"}
    ran = await cairn(db_url, "signal", "cli-sig", "go", "--run-id", str(handle.run_id))
    assert ran.exit_code == 0, ran.stderr
    assert await handle.result(timeout=T) == [{"n": 1}, [2, "two"]]
    assert signals(sql, handle.run_id)[-1] == {"name": "go", "payload": None}


async def test_cairn_signal_bad_input_exits_2_and_writes_nothing(client, db_url, sql):
    handle = await client.start(collector, 1, id="cli-bad")
    ran = await cairn(db_url, "signal", "cli-bad", "item", "--input", '{"a": 1,\n "b": }')
    assert_error(ran, 2, "--input is not valid JSON", "line 2 column 7")
    ran = await cairn(db_url, "signal", "cli-bad", "item", "--input", "[NaN]")
    assert_error(ran, 2, "NaN")
    ran = await cairn(db_url, "signal", "cli-bad", "", "--input", "1")
    assert_error(ran, 2, "signal name")
    ran = await cairn(db_url, "signal", "no-such-workflow", "item")
    assert_error(ran, 2, "no-such-workflow")
    ran = await cairn(db_url, "signal", "cli-bad", "item", "--run-id", "not-a-uuid")
    assert_error(ran, 2, "not a run id")
    assert signals(sql, handle.run_id) == []
    assert sql("SELECT count(*) FROM cairn.inbox") == [(0,)]


async def test_cairn_signal_to_a_closed_workflow_exits_2(client, db_url, start_worker, sql):
    await start_worker(workflows=[collector])
    handle = await client.signal_with_start(collector, 0, id="cli-closed", signal="go")
    await handle.result(timeout=T)
    before = events(sql, handle.run_id)
    ran = await cairn(db_url, "signal", "cli-closed", "go", "--json")
    assert_error(ran, 2, "is closed", "completed")
    assert ran.stdout == ""
    assert events(sql, handle.run_id) == before


async def test_cairn_query(client, db_url, start_worker, sql):
    await start_worker(workflows=[mailbox], activities=[shout])
    handle = await client.start(mailbox, id="cli-q")
    await handle.signal("add", 7)
    await wait_until(lambda: signals(sql, handle.run_id))
    ran = await cairn(db_url, "query", "cli-q", "state")
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout) == {"added": [7], "loud": []}
    ran = await cairn(db_url, "query", "cli-q", "added_plus", "--input", '"x"', "--json")
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout) == {"workflow_id": "cli-q", "run_id": handle.run_id, "query": "added_plus",
                                      "answer": [7, "x"]}
    # Unknown query name: bad input. A handler that raises: a runtime error.
    ran = await cairn(db_url, "query", "cli-q", "nope")
    assert_error(ran, 2, "no query handler 'nope'", "known: added_plus, boom, sneaky, state")
    ran = await cairn(db_url, "query", "cli-q", "boom")
    assert_error(ran, 1, "division by zero")
    ran = await cairn(db_url, "query", "cli-q", "state", "--input", "{oops")
    assert_error(ran, 2, "not valid JSON", "line 1 column 2")
    ran = await cairn(db_url, "query", "no-such-workflow", "state")
    assert_error(ran, 2, "no-such-workflow")
    assert sql("SELECT count(*) FROM cairn.query_requests") == [(0,)]


async def test_cairn_query_without_a_worker_times_out(client, db_url, sql):
    await client.start(mailbox, id="cli-q-alone", queue="nobody-home")
    ran = await cairn(db_url, "query", "cli-q-alone", "state", "--timeout", "0.5")
    assert_error(ran, 1, "no worker answered", "queue 'nobody-home'")
    assert sql("SELECT count(*) FROM cairn.query_requests") == [(0,)]
