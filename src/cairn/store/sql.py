"""Loads ``store/queries.sql`` once into a dict of named statements."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """Every named statement, keyed by name."""
    text = files("cairn").joinpath("store/queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # Whole-line comments (the description first, notes within) stay in the file: the
        # statement sent is shorter, and psycopg caches the parsing of a statement only up
        # to 4,096 bytes (record_workflow_tasks, with its comments, was parsed at every call).
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        statement = _unindented("\n".join(lines).strip())
        if name in out:
            raise RuntimeError(f"queries.sql names {name!r} twice")
        out[name] = statement
    return out


_QUOTE = re.compile(r"'|\$(?:[A-Za-z_]\w*)?\$|--")


def _unindented(statement: str) -> str:
    """The statement without the indentation of its lines, which is for people (a seventh
    of record_workflow_tasks: 627 of 4,492 bytes; statements not PREPAREd stay under
    psycopg's 4,096-byte parse cache, tests/unit/test_queries.py). A line that begins
    inside a quoted literal (``'...'`` or ``$tag$...$tag$``) keeps its indentation: it is
    data. ``--`` outside a literal ends the line's scan."""
    out, quote = [], None
    for line in statement.split("\n"):
        out.append(line.lstrip(" ") if quote is None else line)
        for m in _QUOTE.finditer(line):
            token = m.group()
            if quote is None and token == "--":  # a comment to the end of the line
                break
            if quote is None:
                quote = token
            elif token == quote:
                quote = None
    return "\n".join(out)


def q(name: str) -> str:
    """One named statement."""
    return queries()[name]


# ---------------------------------------------------------------- the hot path's statements

# The statements of the two hot transactions (a claimed batch, a fast-path group). Worker
# connections PREPARE them by name once (cairn.store.transactions) and send them as ``EXECUTE``
# in a simple query, so that the transaction's BEGIN rides with its first statement and its
# COMMIT with its last: two round trips per transaction instead of four.
PREPARED = ("claim_workflow_task", "complete_activities_and_lock", "complete_activities_speculated",
            "record_workflow_tasks")

_PARAM = re.compile(r"%\((\w+)\)s")


@cache
def _positional(name: str) -> tuple[str, tuple[str, ...]]:
    """A statement with ``$n`` parameters, and the parameter names in order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    text = _PARAM.sub(number, q(name))
    if "%" in text:  # a literal %% would need unescaping: none of them has one
        raise RuntimeError(f"statement {name!r} has a % that is not a parameter")
    return text, tuple(names)


def prepare_statements() -> str:
    """The PREPAREs of :data:`PREPARED`, as one script."""
    return ";\n".join(f"PREPARE cairn_{name} AS\n{_positional(name)[0]}" for name in PREPARED)


@cache
def execute_statement(*names: str, begin: bool = False, commit: bool = False) -> str:
    """``EXECUTE`` of prepared statements, one after the other in one simple query, with
    ``%s`` placeholders (client-side binding); after a BEGIN and before a COMMIT if asked."""
    calls = [f"EXECUTE cairn_{name}({', '.join(['%s'] * len(_positional(name)[1]))})" for name in names]
    return "; ".join([*(["BEGIN"] if begin else []), *calls, *(["COMMIT"] if commit else [])])


def execute_arguments(name: str, params: dict[str, object]) -> list[object]:
    """The parameters of :func:`execute_statement`, in order."""
    return [params[key] for key in _positional(name)[1]]
