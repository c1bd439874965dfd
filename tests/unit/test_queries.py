"""The named statements as sent (cairn.engine.queries)."""

from __future__ import annotations

from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

from cairn.engine.queries import queries


def test_statements_fit_psycopg_parse_cache() -> None:
    """psycopg re-parses a statement's placeholders at every call once it is longer than
    its cache limit (4,096 bytes): record_workflow_tasks once was, on the hot path."""
    too_long = {name: len(text.encode()) for name, text in queries().items()
                if len(text.encode()) > MAX_CACHED_STATEMENT_LENGTH}
    assert too_long == {}


def test_statements_are_sent_without_whole_line_comments() -> None:
    for name, text in queries().items():
        assert not [line for line in text.splitlines() if line.lstrip().startswith("--")], name
