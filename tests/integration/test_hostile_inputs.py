"""Hostile inputs (issue 15, D14 and D15): each gets one clear line, exit 2 in the CLI or
400 in the web view, and writes nothing (row counts of every cairn.* table unchanged).

- ``--where``: non-ASCII names, deep nesting, huge or infinite numbers, datetimes with
  no UTC form; and a legal filter over odd stored data (a "2024-99-99" keyword) answered
  with the right rows instead of failing the whole query.
- The edges: @files that are not UTF-8 or never end, modules with a SyntaxError, limits
  and timeouts out of range, names (namespace, queue, ids, types) empty or with control
  characters or NUL, a 10,000-character id (shortened in the message), and ``db migrate``
  as a role that does not own the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from click.testing import CliRunner, Result

from cairn import Client, InputValidationError, Worker, workflow
from cairn.cli import main as cli
from cairn.cli._base import parse_json
from cairn.store.filters import parse_filter
from cairn.visibility import MAX_FILTER_DEPTH

from .test_bad_input_matrix import counts, registered  # noqa: F401  (a fixture)
from .test_security import as_role
from .ui_support import ui_server

LONG_ID = "i" * 10_000


async def cairn(db_url: str, *args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", db_url, *args])


def one_error_line(ran: Result) -> str:
    """The single ``error: ...`` line a refused command prints (and nothing else)."""
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("error: "), ran.stderr
    return lines[0]


@workflow.defn
async def idle() -> None:
    await workflow.wait_condition(lambda: False)


# ---------------------------------------------------------------- D14: --where

HOSTILE_FILTERS = [
    ("non_ascii_letter", "café = 1", "unexpected character 'é' (U+00E9) at column 4"),
    ("cyrillic_lookalike", "Ѕtatus = 'running'", "U+0405"),  # noqa: RUF001  (the look-alike is the point)
    ("non_ascii_digit", "amount = ٣", "U+0663"),
    ("deep_parentheses", "(" * 400 + "a = 1" + ")" * 400, f"deeper than {MAX_FILTER_DEPTH} levels"),
    ("many_nots", "NOT " * 1500 + "a = 1", f"deeper than {MAX_FILTER_DEPTH} levels"),
    ("huge_number", "a = " + "9" * 5000, "a number of 5000 characters"),
    ("infinite_number", "a > 1e999", "out of range"),
    ("datetime_overflowing_utc", "StartTime < '9999-12-31T23:59:59-05:00'", "needs a datetime string"),
    ("long_bad_token", "a = 1 " + "x" * 5000, "(5000 chars)"),
]


@pytest.mark.parametrize(("name", "where", "fragment"), HOSTILE_FILTERS, ids=[c[0] for c in HOSTILE_FILTERS])
async def test_hostile_filters_exit_2_in_one_line(db_url, sql, name, where, fragment):
    before = counts(sql)
    ran = await cairn(db_url, "list", "--where", where)
    assert ran.exit_code == 2, (ran.exit_code, ran.stderr, ran.exception)
    line = one_error_line(ran)
    assert line.startswith("error: invalid filter: "), line
    assert fragment in line, line
    assert len(line) < 300, line
    assert counts(sql) == before


async def test_hostile_filters_are_400_in_the_web_view(db_url, client):
    await client.start(idle, id="one", search_attributes={"a": 1})
    async with ui_server(db_url) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        for name, where, fragment in HOSTILE_FILTERS:
            page = await http.get("/", params={"where": where})
            assert page.status_code == 400, (name, page.status_code, page.text[:500])
            assert 'id="error"' in page.text, name
            api = await http.get("/api/runs", params={"where": where})
            assert api.status_code == 400, (name, api.status_code, api.text[:500])
            assert fragment in api.json()["error"], (name, api.json())


def test_depth_at_the_limit_is_fine_and_one_past_is_refused():
    assert parse_filter("(" * MAX_FILTER_DEPTH + "a = 1" + ")" * MAX_FILTER_DEPTH).params["w0"] == "a"
    assert parse_filter("NOT " * MAX_FILTER_DEPTH + "a = 1").sql.count("NOT") == MAX_FILTER_DEPTH
    with pytest.raises(InputValidationError, match="deeper than"):
        parse_filter("(" * (MAX_FILTER_DEPTH + 1) + "a = 1" + ")" * (MAX_FILTER_DEPTH + 1))
    # Siblings do not add up: depth is nesting, not count.
    parse_filter(" AND ".join(["(NOT a = 1)"] * 500))


# Stored strings that look like datetimes but are not (each made the timestamptz cast, and
# so any ordering comparison on the key over the whole namespace, fail), and real ones.
ODD_DATES = {
    "bad-month": "2024-99-99",
    "not-leap": "2023-02-29",
    "april-31": "2024-04-31",
    "hour-25": "2024-05-01T25:00:00Z",
    "year-0": "0000-01-01",
    "offset-16h": "2024-05-01T12:00:00+16:00",
    "word": "soon",
}
REAL_DATES: dict[str, Any] = {
    "leap-day": "2024-02-29T10:00:00+01:00",  # 09:00 UTC
    "may": datetime(2024, 5, 1, 12, tzinfo=UTC),
    "far": "9999-12-31T23:59:59-05:00",  # year 10000 in UTC: Postgres compares it, Python cannot
}


async def test_a_legal_filter_over_odd_stored_strings_answers_for_the_other_runs(db_url, client):
    for wid, value in {**ODD_DATES, **REAL_DATES}.items():
        await client.start(idle, id=wid, search_attributes={"due": value})
    await client.start(idle, id="number", search_attributes={"due": 5})

    async def ids(where: str) -> list[str]:
        return sorted(r["workflow_id"] for r in await client.list(where=where))

    assert await ids("due > '2024-01-01'") == ["far", "leap-day", "may"]
    assert await ids("due >= '2024-02-29T09:00:00Z' AND due < '2025-01-01'") == ["leap-day", "may"]
    assert await ids("due < '2024-03-01'") == ["leap-day"]
    assert await ids("NOT due > '2000-01-01'") == sorted([*ODD_DATES, "number"])
    assert await ids("due = '2024-99-99'") == ["bad-month"]  # equality is on the stored text
    assert await ids("due = '9999-12-31T23:59:59-05:00'") == ["far"]  # no UTC form in Python: a string
    assert await ids("due > 4") == ["number"]
    async with ui_server(db_url) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        api = await http.get("/api/runs", params={"where": "due > '2024-01-01'"})
    assert api.status_code == 200, api.text
    assert sorted(r["workflow_id"] for r in api.json()["runs"]) == ["far", "leap-day", "may"]
    for where, expected in [("due > '2024-01-01'", ["far", "leap-day", "may"]),
                            ("due IN ('9999-12-31T23:59:59-05:00', '2024-05-01T12:00:00Z')", ["far", "may"])]:
        ran = await cairn(db_url, "list", "--where", where, "--json")
        assert ran.exit_code == 0, ran.stderr
        assert sorted(r["workflow_id"] for r in json.loads(ran.stdout)["runs"]) == expected


# ---------------------------------------------------------------- D15: the CLI table


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Hostile files, and a module with a SyntaxError importable from the working directory."""
    (tmp_path / "latin1.json").write_bytes(b'["caf\xe9"]')
    (tmp_path / "binary.json").write_bytes(bytes(range(256)) * 8)
    module = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("def oops(:\n    pass\n")
    good = f"good_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{good}.py").write_text("from cairn import activity\n\n@activity.defn\nasync def step() -> None:\n"
                                         "    pass\n")
    monkeypatch.chdir(tmp_path)
    return {"latin1": str(tmp_path / "latin1.json"), "binary": str(tmp_path / "binary.json"), "broken": module,
            "good": good}


CLI_CASES: list[tuple[str, tuple[str, ...], str]] = [
    ("input_not_utf8", ("start", "echo", "--input", "@{latin1}"), "is not UTF-8 text (byte 5 is 0xe9)"),
    ("signal_input_not_utf8", ("signal", "nobody", "s", "--input", "@{latin1}"), "is not UTF-8"),
    ("replay_binary_file", ("replay", "{binary}", "-m", "json"), "history file"),
    ("input_dev_zero", ("start", "echo", "--input", "@/dev/zero"), "is larger than 2097152 bytes"),
    ("worker_syntax_error", ("worker", "-m", "{broken}"), "invalid syntax ("),
    ("worker_newline_queue", ("worker", "-m", "{good}", "-q", "a\nb"), "queue name contains the control"),
    ("worker_empty_namespace", ("--namespace", "", "worker", "-m", "{good}"), "the namespace must be a non-empty"),
    ("list_huge_limit", ("list", "--limit", "99999999999999999999"), "limit must be a whole number from 1"),
    ("wait_timeout_nan", ("start", "echo", "--input", "1", "--wait", "--timeout", "nan"), "finite, got nan"),
    ("wait_timeout_inf", ("start", "echo", "--input", "1", "--wait", "--timeout", "inf"), "finite, got inf"),
    ("wait_timeout_negative", ("start", "echo", "--input", "1", "--wait", "--timeout", "-1"), "got -1.0"),
    ("empty_namespace", ("--namespace", "", "start", "echo", "--input", "1"), "the namespace must be a non-empty"),
    ("newline_namespace", ("--namespace", "a\nb", "start", "echo", "--input", "1"), "namespace contains the control"
                                                                                      " character U+000A"),
    ("newline_queue", ("start", "echo", "--input", "1", "--queue", "a\nb"), "queue name contains the control"),
    ("blank_queue", ("start", "echo", "--input", "1", "--queue", " q"), "leading or trailing blanks"),
    ("long_id_lookup", ("describe", LONG_ID), "… (10000 chars) is longer than 1000"),
    ("long_id_start", ("start", "echo", "--input", "1", "--id", LONG_ID), "… (10000 chars) is longer than 1000"),
    ("long_id_unknown", ("describe", "j" * 999), "… (999 chars)"),
    ("long_signal_name", ("signal", "nobody", "s" * 10_000), "… (10000 chars)"),
]


@pytest.mark.usefixtures("registered")  # a worker has registered echo, so starts get to their checks
@pytest.mark.parametrize(("name", "args", "fragment"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
async def test_cli_hostile_input_exits_2_in_one_line_and_writes_nothing(db_url, sql, files, name, args, fragment):
    before = counts(sql)
    ran = await cairn(db_url, *(a.format(**files) for a in args))
    assert ran.exit_code == 2, (ran.exit_code, ran.stderr, ran.exception)
    line = one_error_line(ran)
    assert fragment in line, line
    assert len(line) < 400, line  # a 10,000-character id is not echoed whole
    assert counts(sql) == before


def test_an_at_file_is_read_only_to_the_limit_plus_one_byte(tmp_path):
    """A pipe whose writer never closes: reading it whole would wait for ever; the bounded
    read returns after limit + 1 bytes and refuses."""
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)
    done = threading.Event()

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(b" " * 5000)  # within the pipe's buffer: the write does not block
            f.flush()
            done.wait(30)  # no EOF until the reader has finished

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with pytest.raises(InputValidationError, match="is larger than 1000 bytes"):
            parse_json(f"@{fifo}", "--input", max_bytes=1000)
    finally:
        done.set()
        thread.join()


# ---------------------------------------------------------------- D15: the library's edge (same validators)


async def test_api_hostile_names_write_nothing(db_url, client, sql):
    before = counts(sql)
    cases: list[tuple[Any, str]] = [
        (lambda: Client.connect(db_url, namespace=""), "namespace must be a non-empty"),
        (lambda: Client.connect(db_url, namespace="a\nb"), "U+000A"),
        (lambda: asyncio.sleep(0, Worker(db_url, workflows=[idle], queues=["a\rb"])), "U+000D"),
        (lambda: asyncio.sleep(0, Worker(db_url, workflows=[idle], namespace="\x1b[31m")), "U+001B"),
        (lambda: client.start(idle, queue="a\nb"), "U+000A"),
        (lambda: client.start("ty\x00pe"), "NUL"),
        (lambda: client.get_handle("a\x00b").describe(), "NUL"),
        (lambda: client.get_handle("").describe(), "non-empty"),
        (lambda: client.retry("a\x00b"), "NUL"),
        (lambda: client.list(workflow_type="a\x00"), "NUL"),
        (lambda: client.list(limit=10**20), "from 1 to"),
        (lambda: client.get_handle("x").result(timeout=math.nan), "finite"),
        (lambda: client.start(idle, search_attributes={"d": datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(
            hours=5)))}), "outside years 1-9999"),
    ]
    for call, fragment in cases:
        with pytest.raises(InputValidationError, match=re.escape(fragment)):
            await call()
    assert counts(sql) == before


async def test_nul_in_a_looked_up_id_or_type_is_400_in_the_web_view(db_url):
    async with ui_server(db_url) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        page = await http.get("/runs/" + quote("a\x00b", safe=""))
        api = await http.get("/api/runs", params={"type": "a\x00b"})
        long = await http.get("/api/runs/" + "i" * 5000)  # aiohttp refuses request lines past 8190 bytes
    assert page.status_code == 400, page.text[:500]
    assert "NUL" in page.text
    assert api.status_code == 400, api.text
    assert "NUL" in api.json()["error"]
    assert long.status_code == 400, long.text[:500]
    assert "(5000 chars)" in long.json()["error"]
    assert len(long.text) < 500


# ---------------------------------------------------------------- D15: db migrate as a non-owner


@contextlib.contextmanager
def login_role(db_url: str) -> Iterator[str]:
    """A role with no privileges beyond PUBLIC's (roles are server-wide: unique, dropped after)."""
    name = f"cairn_t_nobody_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
    try:
        yield name
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{name}"')


@pytest.mark.parametrize("schema", ["none", "migrated"])
async def test_migrate_as_a_non_owner_says_what_is_missing(db_url, empty_db_url, schema):
    url = empty_db_url if schema == "none" else db_url
    with login_role(url) as role:
        ran = await cairn(as_role(url, role), "db", "migrate")
        # Exit 1, not 2: the command is right, the role's grants (the environment) are not.
        assert ran.exit_code == 1, (ran.exit_code, ran.stderr, ran.exception)
        line = one_error_line(ran)
    assert f"role '{role}' cannot migrate the Cairn schema: permission denied for database" in line, line
    assert "need CREATE on database" in line
    with psycopg.connect(url) as conn:
        cairn_schemas = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'cairn'").fetchone()
    assert cairn_schemas == ((0,) if schema == "none" else (1,))
