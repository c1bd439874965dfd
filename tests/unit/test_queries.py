"""The named statements as sent (cairn.store.sql)."""

from __future__ import annotations

import re

from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

from cairn.store.sql import PREPARED, execute_arguments, execute_statement, prepare_statements, queries


def test_statements_fit_psycopg_parse_cache() -> None:
    """psycopg re-parses a statement's placeholders at every call once it is longer than
    its cache limit (4,096 bytes): record_workflow_tasks once was, on the hot path. The hot
    statements (PREPARED) are sent as a short ``EXECUTE`` and their text once per session:
    the limit is the EXECUTE's; only a rare path (a terminate's close) sends the text."""
    too_long = {name: len(text.encode()) for name, text in queries().items()
                if len(text.encode()) > MAX_CACHED_STATEMENT_LENGTH and name not in PREPARED}
    assert too_long == {}
    calls = {name: execute_statement(name, begin=True, commit=True) for name in PREPARED}
    assert {name: len(call) for name, call in calls.items() if len(call) > MAX_CACHED_STATEMENT_LENGTH} == {}


def test_statements_are_sent_without_whole_line_comments() -> None:
    for name, text in queries().items():
        assert not [line for line in text.splitlines() if line.lstrip().startswith("--")], name


def test_prepared_statements_number_their_parameters_in_order() -> None:
    """The hot statements are PREPAREd with $1..$n in the order execute_arguments gives."""
    script = prepare_statements()
    for name in PREPARED:
        assert f"PREPARE cairn_{name} AS" in script
        params = {key: key for key in re.findall(r"%\((\w+)\)s", queries()[name])}
        args = execute_arguments(name, params)
        assert sorted(args) == sorted(set(params)), name  # each parameter once
        body = script.split(f"PREPARE cairn_{name} AS", 1)[1].split("PREPARE cairn_", 1)[0]
        for n, key in enumerate(args, 1):  # $n stands where %(key)s stood
            assert body.count(f"${n}") == queries()[name].count(f"%({key})s"), (name, key)
        call = execute_statement(name, begin=True, commit=True)
        assert call == f"BEGIN; EXECUTE cairn_{name}({', '.join(['%s'] * len(args))}); COMMIT"
