"""Loads ``sql/queries.sql`` once into a dict of named statements."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """Every named statement, keyed by name."""
    text = files("cairn").joinpath("sql/queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # Whole-line comments (the description first, notes within) stay in the file: the
        # statement sent is shorter, and psycopg caches the parsing of a statement only up
        # to 4,096 bytes (record_workflow_tasks, with its comments, was parsed at every call).
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        statement = "\n".join(lines).strip()
        if name in out:
            raise RuntimeError(f"queries.sql names {name!r} twice")
        out[name] = statement
    return out


def q(name: str) -> str:
    """One named statement."""
    return queries()[name]
