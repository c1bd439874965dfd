"""The filter language's SQL: a parsed ``--where`` filter (:mod:`cairn.visibility`) compiled
into a boolean expression over ``cairn.runs``.

The SQL is made only of fixed text from this module and ``%(wN)s`` parameters, numbered in
the order the filter reads. Built-in names map to ``runs`` columns. Equality on a search
attribute is a jsonb containment test, which the GIN index ``runs_search_attributes``
answers; ordering comparisons compare typed values (a value of another type, or a missing
attribute, is unknown, so the row is not listed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from cairn.visibility import BUILTINS as BUILTIN_KINDS
from cairn.visibility import (
    DATETIME_PATTERN,
    And,
    Comparison,
    Condition,
    Not,
    OneOf,
    Or,
    StartsWith,
    Token,
    format_datetime,
    parse_condition,
    parse_datetime,
)

__all__ = ["COLUMNS", "Filter", "compile_condition", "parse_filter"]

# The runs column of each built-in name (cairn.visibility.BUILTINS).
COLUMNS: dict[str, str] = {
    "WorkflowId": "workflow_id",
    "WorkflowType": "workflow_type",
    "Status": "status",
    "ExecutionStatus": "status",
    "StartTime": "created_at",
    "CloseTime": "closed_at",
    "Queue": "queue",
    "TaskQueue": "queue",
    "RunId": "run_id::text",
}
# The date exists (no year 0000, no 2023-02-29, no 04-31): {s} is a string that matched
# DATETIME_PATTERN. Days up to 28 exist in every month: most rows stop at the first comparison.
DATE_EXISTS_SQL = ("substr({s}, 1, 4) <> '0000' AND (substr({s}, 9, 2) <= '28' OR substr({s}, 9, 2)::int <= "
                   "CASE WHEN substr({s}, 6, 2) IN ('04', '06', '09', '11') THEN 30 "
                   "WHEN substr({s}, 6, 2) <> '02' THEN 31 WHEN mod(substr({s}, 1, 4)::int, 4) = 0 "
                   "AND (mod(substr({s}, 1, 4)::int, 100) <> 0 OR mod(substr({s}, 1, 4)::int, 400) = 0) "
                   "THEN 29 ELSE 28 END)")


@dataclass(frozen=True)
class Filter:
    """A compiled filter: a SQL boolean expression over ``cairn.runs`` and its parameters."""

    sql: str
    params: dict[str, Any]


def parse_filter(text: str) -> Filter:
    """Parses a ``--where`` filter (:func:`cairn.visibility.parse_condition`) into a
    parametrised SQL fragment (never raw SQL).

    Raises:
        InputValidationError: the filter is malformed; the message names the column.
    """
    return compile_condition(parse_condition(text))


def compile_condition(condition: Condition) -> Filter:
    """The SQL of a parsed filter (the parser has checked it: compiling never fails)."""
    compiler = _Compiler()
    return Filter(compiler.sql(condition), compiler.params)


class _Compiler:
    """Walks the condition tree in the filter's order; each method returns a SQL fragment."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def param(self, value: Any) -> str:
        name = f"w{len(self.params)}"
        self.params[name] = value
        return f"%({name})s"

    def sql(self, c: Condition) -> str:
        if isinstance(c, Or):
            return "(" + " OR ".join(self.sql(p) for p in c.parts) + ")"
        if isinstance(c, And):
            return "(" + " AND ".join(self.sql(p) for p in c.parts) + ")"
        if isinstance(c, Not):
            # coalesce: NOT of an unknown (a missing attribute) is false, not NULL
            return f"NOT coalesce({self.sql(c.inner)}, false)"
        if isinstance(c, Comparison):
            return self.compare(c.name, c.op, c.value)
        if isinstance(c, OneOf):
            ors = "(" + " OR ".join(self.compare(c.name, "=", v) for v in c.values) + ")"
            return f"NOT coalesce({ors}, false)" if c.negate else ors
        if isinstance(c, StartsWith):
            return self.starts_with(c.name, c.prefix)
        return self.null_test(c.name, negate=c.negate)

    def compare(self, name: Token, op: str, value: Token) -> str:
        column = COLUMNS.get(name.value)
        if column is not None:
            return self.compare_builtin(name, column, op, value)
        key = name.value
        attr = f"(search_attributes -> {self.param(key)})"
        if op in ("=", "!="):
            docs = [{key: value.value}]
            if value.kind == "string":
                docs.append({key: [value.value]})  # a keyword list contains it
                when = parse_datetime(value.value)
                if when is not None and format_datetime(when) != value.value:
                    docs.append({key: format_datetime(when)})  # the stored form of a datetime
            eq = "(" + " OR ".join(f"search_attributes @> {self.param(Jsonb(d))}::jsonb" for d in docs) + ")"
            if op == "=":
                return eq
            return f"(search_attributes ? {self.param(key)} AND NOT {eq})"
        sql_op = op
        if value.kind == "number":
            return (f"(CASE WHEN jsonb_typeof({attr}) = 'number' THEN ({attr} #>> '{{}}')::numeric END"
                    f" {sql_op} {self.param(value.value)}::numeric)")
        when = parse_datetime(value.value)
        if when is not None:
            # Cast only strings that are datetimes: pattern, then (nested, since AND does
            # not order its operands) the date's existence; one odd keyword such as
            # "2024-99-99" or "2023-02-29" must not make the cast, and so the query, fail.
            text = f"({attr} #>> '{{}}')"
            pattern = self.param(DATETIME_PATTERN)
            return (f"(CASE WHEN jsonb_typeof({attr}) = 'string' AND {text} ~ {pattern}::text"
                    f" THEN CASE WHEN {DATE_EXISTS_SQL.format(s=text)} THEN {text}::timestamptz END END"
                    f" {sql_op} {self.param(when)}::timestamptz)")
        return (f"(CASE WHEN jsonb_typeof({attr}) = 'string' THEN ({attr} #>> '{{}}') END"
                f" {sql_op} {self.param(value.value)}::text)")

    def compare_builtin(self, name: Token, column: str, op: str, value: Token) -> str:
        kind = BUILTIN_KINDS[name.value]
        sql_op = "<>" if op == "!=" else op
        if kind == "time":
            return f"({column} {sql_op} {self.param(parse_datetime(value.value))}::timestamptz)"
        text = value.value.lower() if kind == "status" else value.value
        return f"({column} {sql_op} {self.param(text)}::text)"

    def starts_with(self, name: Token, prefix: str) -> str:
        column = COLUMNS.get(name.value)
        if column is not None:
            return f"starts_with({column}, {self.param(prefix)}::text)"
        attr = f"(search_attributes -> {self.param(name.value)})"
        return (f"(CASE WHEN jsonb_typeof({attr}) = 'string' THEN starts_with({attr} #>> '{{}}', "
                f"{self.param(prefix)}::text) END)")

    def null_test(self, name: Token, *, negate: bool) -> str:
        column = COLUMNS.get(name.value)
        if column is not None:
            return f"({column} IS {'NOT ' if negate else ''}NULL)"
        test = f"search_attributes ? {self.param(name.value)}"
        return f"({test})" if negate else f"(NOT {test})"
