"""Visibility: search attributes and the filter language of ``cairn list --where``.

Search attributes are typed key/values on a run (``cairn.runs.search_attributes``, jsonb),
set at start and upserted by the workflow. Their JSON form: strings (keywords and text),
integers, floats, booleans, datetimes as ISO-8601 UTC strings (fixed width, so they sort
as text too) and lists of strings (keyword lists). (The memo, a plain JSON payload, is
checked by :func:`cairn.payloads.check_memo`.)

The filter language is parsed here, never handed to Postgres: a tokenizer and a
recursive-descent parser turn ``customer = "acme" AND amount > 10`` into a tree of checked
conditions (:data:`Condition`), which :mod:`cairn.store.filters` compiles into a SQL
fragment made only of fixed text and ``%(wN)s`` parameters. Built-in names
(``WorkflowId``, ``WorkflowType``, ``Status``, ``StartTime``, ``CloseTime``, ``Queue``,
Temporal's) name ``runs`` columns; every other name is a search attribute key.
This module is pure: no SQL, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from cairn.errors import InputValidationError, InvalidFilter
from cairn.options import check_text, shown

MAX_KEY_LENGTH = 64
MAX_ATTRIBUTES = 100
MAX_STRING_LENGTH = 2048
MAX_LIST_ITEMS = 100
MAX_FILTER_LENGTH = 10_000
MAX_FILTER_DEPTH = 100  # nested parentheses and NOTs (the parser recurses once per level)
MAX_NUMBER_LENGTH = 100  # characters of a number literal

# Built-in filter names (Temporal's) and the kind of value each takes; each names a column of
# cairn.runs (cairn.store.filters.COLUMNS).
BUILTINS: dict[str, str] = {
    "WorkflowId": "text",
    "WorkflowType": "text",
    "Status": "status",
    "ExecutionStatus": "status",
    "StartTime": "time",
    "CloseTime": "time",
    "Queue": "text",
    "TaskQueue": "text",
    "RunId": "text",
}
KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE", "STARTS_WITH", "EXISTS"})
# Names a search attribute may not take: the built-ins and the keywords (case-insensitive).
RESERVED = frozenset({k.lower() for k in BUILTINS} | {k.lower() for k in KEYWORDS})

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What a datetime looks like, field by field (a month 01-12, an hour 00-23, an offset within
# Postgres' +-15:59), in the syntax Python's re and Postgres' ~ share. The same text guards
# the filter's literals and the stored strings a comparison casts (cairn.store.filters), so
# both sides agree on what is a datetime; year 0000 and the day of the month are checked
# apart (cairn.store.filters.DATE_EXISTS_SQL; Python's fromisoformat refuses them), as a
# lookahead would double the regex's cost (groups do not capture, which Postgres matches faster).
DATETIME_PATTERN = (r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?:[T ](?:[01]\d|2[0-3]):[0-5]\d"
                     r"(?::[0-5]\d(?:\.\d{1,6})?)?(?:Z|[+-](?:0\d|1[0-5])(?::?[0-5]\d)?)?)?$")
_DATETIME = re.compile(DATETIME_PATTERN, re.ASCII)


# ---------------------------------------------------------------- values


def format_datetime(value: datetime) -> str:
    """The stored form of a datetime: ISO-8601 in UTC with microseconds (fixed width)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_datetime(text: str) -> datetime | None:
    """A datetime in UTC from an ISO-8601 string (a date alone is midnight UTC; naive is UTC).

    ``None`` when the text is not one, or names an instant that has no UTC form in Python
    (``9999-12-31T23:59:59-05:00`` is in year 10000): such a literal is a plain string.
    """
    if not _DATETIME.match(text):
        return None
    try:
        value = datetime.fromisoformat(text.replace(" ", "T", 1) if len(text) > 10 else text)
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def check_key(key: Any) -> str:
    """Validates a search attribute name.

    Raises:
        InputValidationError: not identifier-like, too long, or a reserved name.
    """
    if not isinstance(key, str) or not _KEY.match(key):
        raise InputValidationError(
            f"search attribute name {shown(key) if isinstance(key, str) else repr(key)} is invalid: "
            "use ASCII letters, digits and _ (not first a digit)")
    if len(key) > MAX_KEY_LENGTH:
        raise InputValidationError(f"search attribute name {key[:20]!r}... is longer than {MAX_KEY_LENGTH} characters")
    if key.lower() in RESERVED:
        raise InputValidationError(f"search attribute name {key!r} is reserved (a built-in name or a keyword)")
    return key


def _check_value(key: str, value: Any) -> Any:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputValidationError(f"search attribute {key!r}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise InputValidationError(f"search attribute {key!r} is longer than {MAX_STRING_LENGTH} characters")
        return check_text(value, f"search attribute {key!r}")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InputValidationError(f"search attribute {key!r}: the datetime needs a timezone (e.g. UTC)")
        try:
            return format_datetime(value)
        except OverflowError:
            raise InputValidationError(f"search attribute {key!r}: {value.isoformat()} is outside years 1-9999 "
                                       "in UTC") from None
    if isinstance(value, date):
        return format_datetime(datetime(value.year, value.month, value.day, tzinfo=UTC))
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST_ITEMS:
            raise InputValidationError(f"search attribute {key!r} has more than {MAX_LIST_ITEMS} items")
        if not all(isinstance(v, str) for v in value):
            raise InputValidationError(f"search attribute {key!r}: a list must hold only strings (keywords)")
        return [_check_value(key, v) for v in value]
    raise InputValidationError(
        f"search attribute {key!r} has type {type(value).__name__}; use str, int, float, bool, "
        "datetime or a list of str")


def check_search_attributes(values: Mapping[str, Any] | None, *, allow_null: bool = False) -> dict[str, Any]:
    """Validates search attributes and returns their JSON form (``None`` removes a key on upsert).

    Raises:
        InputValidationError: a bad name or value; say which.
    """
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise InputValidationError("search attributes must be a mapping of name to value")
    if len(values) > MAX_ATTRIBUTES:
        raise InputValidationError(f"more than {MAX_ATTRIBUTES} search attributes")
    out: dict[str, Any] = {}
    for key, value in values.items():
        check_key(key)
        if value is None:
            if not allow_null:
                raise InputValidationError(f"search attribute {key!r} is null (only an upsert may remove a key)")
            out[key] = None
        else:
            out[key] = _check_value(key, value)
    return out


def merge_upserts(current: dict[str, Any], upsert: Mapping[str, Any]) -> dict[str, Any]:
    """The search attributes after an upsert (a ``None`` value removes the key)."""
    out = dict(current)
    for key, value in upsert.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- the filter language


@dataclass(frozen=True)
class Token:
    """One token of a filter: its kind, value, and 1-based column."""

    kind: str  # "name", "string", "number", "op", "(", ")", ",", "kw", "end", "error"; "bool" for literals
    value: Any
    column: int
    text: str


_OPS = ("<=", ">=", "!=", "<>", "=", "<", ">")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORDISH = re.compile(r"[\w.+-]+")
_DIGITS = "0123456789"


def _error(message: str, column: int, hint: str = "") -> InvalidFilter:
    return InvalidFilter(f"invalid filter: {message} at column {column}{' (' + hint + ')' if hint else ''}", column)


def tokenize(text: str) -> list[Token]:
    """Splits a filter into tokens.

    A lexical error (an unterminated string, a character the language lacks) becomes an
    ``error`` token that ends the list: the parser raises it when it gets there, so that
    the first error in the text is the one reported.
    """
    tokens: list[Token] = []
    try:
        _scan(text, tokens)
    except _LexError as exc:
        tokens.append(Token("error", exc.args, exc.args[1], ""))
    tokens.append(Token("end", None, len(text) + 1, "end of filter"))
    return tokens


class _LexError(Exception):
    pass


def _scan(text: str, tokens: list[Token]) -> None:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        col = i + 1
        if c.isspace():
            i += 1
        elif c in "'\"":
            j, chars = i + 1, []
            while True:
                if j >= n:
                    raise _LexError(f"unterminated string starting with {c}", col)
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    chars.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
                    j += 2
                elif text[j] == c:
                    if j + 1 < n and text[j + 1] == c:  # a doubled quote, as in SQL
                        chars.append(c)
                        j += 2
                    else:
                        break
                else:
                    chars.append(text[j])
                    j += 1
            tokens.append(Token("string", "".join(chars), col, text[i:j + 1]))
            i = j + 1
        elif c in _DIGITS or (c in "+-." and i + 1 < n and text[i + 1] in _DIGITS + "."):
            m = _NUMBER.match(text, i)
            if m is None or (m.end() < n and (text[m.end()].isalnum() or text[m.end()] in "_.")):
                bad = _WORDISH.match(text, i)
                raise _LexError(f"unexpected token {shown(bad.group(0)) if bad else repr(c)}", col)
            raw = m.group(0)
            tokens.append(Token("number", _number(raw, col), col, raw))
            i = m.end()
        elif not c.isascii() and (c.isalnum() or c == "_"):
            # Names are ASCII, as the names check_key lets a run store; a look-alike letter
            # (a Cyrillic S in "Status") would otherwise name an attribute no run has.
            raise _LexError(f"unexpected character {c!r} (U+{ord(c):04X})", col,
                            "names and numbers use ASCII letters, digits and _")
        elif c.isalpha() or c == "_":
            name = _NAME.match(text, i)
            assert name is not None  # c is a letter or _
            word = name.group(0)
            kind = "kw" if word.upper() in KEYWORDS else "name"
            tokens.append(Token(kind, word.upper() if kind == "kw" else word, col, word))
            i = name.end()
        elif c in "(),":
            tokens.append(Token(c, c, col, c))
            i += 1
        else:
            op = next((o for o in _OPS if text.startswith(o, i)), None)
            if op is None:
                raise _LexError(f"unexpected character {c!r}", col)
            tokens.append(Token("op", "!=" if op == "<>" else op, col, op))
            i += len(op)


def _number(raw: str, column: int) -> int | float:
    """A number literal's value: bounded in length, and finite (``1e999`` is not)."""
    if len(raw) > MAX_NUMBER_LENGTH:
        raise _LexError(f"a number of {len(raw)} characters (at most {MAX_NUMBER_LENGTH})", column)
    value = int(raw) if re.fullmatch(r"[+-]?\d+", raw) else float(raw)
    if not math.isfinite(value):
        raise _LexError(f"the number {raw} is out of range", column)
    return value


# The parsed filter: a tree of conditions, each already checked (names, literal kinds,
# datetimes), that cairn.store.filters compiles to SQL without raising.


@dataclass(frozen=True)
class Comparison:
    """``name op value``: ``op`` is one of ``= != < <= > >=``."""

    name: Token
    op: str
    value: Token


@dataclass(frozen=True)
class OneOf:
    """``name IN (values)``, or ``name NOT IN (values)`` when ``negate``."""

    name: Token
    values: tuple[Token, ...]
    negate: bool


@dataclass(frozen=True)
class StartsWith:
    """``name STARTS_WITH 'prefix'``."""

    name: Token
    prefix: str


@dataclass(frozen=True)
class IsNull:
    """``name IS NULL``, or ``name IS NOT NULL`` / ``EXISTS name`` when ``negate``."""

    name: Token
    negate: bool


@dataclass(frozen=True)
class Not:
    """``NOT inner``: true when ``inner`` is false or unknown (a missing attribute)."""

    inner: Condition


@dataclass(frozen=True)
class And:
    """Two or more conditions that must all hold."""

    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    """Two or more conditions of which one must hold."""

    parts: tuple[Condition, ...]


Condition = Comparison | OneOf | StartsWith | IsNull | Not | And | Or


class _Parser:
    """Recursive descent over the tokens; each method returns a checked :data:`Condition`."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0  # parentheses and NOTs open around the current token

    # -- helpers

    @property
    def tok(self) -> Token:
        t = self.tokens[self.pos]
        if t.kind == "error":
            raise _error(*t.value)
        return t

    def take(self) -> Token:
        t = self.tokens[self.pos]
        self.pos += 1
        return t

    def is_kw(self, *words: str) -> bool:
        return self.tok.kind == "kw" and self.tok.value in words

    def expect_kw(self, word: str) -> None:
        if not self.is_kw(word):
            raise self.unexpected(f"expected {word}")
        self.take()

    def unexpected(self, hint: str = "") -> InvalidFilter:
        t = self.tok
        what = "unexpected end of filter" if t.kind == "end" else f"unexpected token {shown(t.text)}"
        return _error(what, t.column, hint)

    def enter(self) -> None:
        """One more level of nesting (before recursing), bounded so that no input recurses deeply."""
        self.depth += 1
        if self.depth > MAX_FILTER_DEPTH:
            raise _error(f"the filter nests deeper than {MAX_FILTER_DEPTH} levels of parentheses and NOT",
                         self.tok.column)

    # -- grammar

    def parse(self) -> Condition:
        if self.tok.kind == "end":
            raise _error("empty filter", 1)
        out = self.or_expr()
        if self.tok.kind != "end":
            raise self.unexpected("expected AND, OR or the end")
        return out

    def or_expr(self) -> Condition:
        parts = [self.and_expr()]
        while self.is_kw("OR"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self) -> Condition:
        parts = [self.not_expr()]
        while self.is_kw("AND"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def not_expr(self) -> Condition:
        if self.is_kw("NOT"):
            self.enter()
            self.take()
            inner = self.not_expr()
            self.depth -= 1
            return Not(inner)
        return self.primary()

    def primary(self) -> Condition:
        if self.tok.kind == "(":
            self.enter()
            self.take()
            inner = self.or_expr()
            if self.tok.kind != ")":
                raise self.unexpected("expected ')'")
            self.take()
            self.depth -= 1
            return inner
        if self.is_kw("EXISTS"):
            self.take()
            return IsNull(self.name(), negate=True)
        return self.comparison()

    def name(self) -> Token:
        if self.tok.kind != "name":
            raise self.unexpected("expected a built-in name or a search attribute")
        return self.take()

    def literal(self) -> Token:
        t = self.tok
        if t.kind in ("string", "number") or (t.kind == "kw" and t.value in ("TRUE", "FALSE")):
            self.take()
            if t.kind == "kw":
                return Token("bool", t.value == "TRUE", t.column, t.text)
            return t
        raise self.unexpected("expected a value: a quoted string, a number, true or false")

    def comparison(self) -> Condition:
        name = self.name()
        if self.tok.kind == "op":
            op = self.take().value
            value = self.literal()
            _check_comparison(name, op, value)
            return Comparison(name, op, value)
        if self.is_kw("IN") or self.is_kw("NOT"):
            negate = self.is_kw("NOT")
            if negate:
                self.take()
            self.expect_kw("IN")
            if self.tok.kind != "(":
                raise self.unexpected("expected '(' after IN")
            self.take()
            values = [self.literal()]
            while self.tok.kind == ",":
                self.take()
                values.append(self.literal())
            if self.tok.kind != ")":
                raise self.unexpected("expected ',' or ')'")
            self.take()
            for value in values:
                _check_comparison(name, "=", value)
            return OneOf(name, tuple(values), negate)
        if self.is_kw("STARTS_WITH"):
            self.take()
            value = self.literal()
            if value.kind != "string":
                raise _error("STARTS_WITH needs a quoted string", value.column)
            if BUILTINS.get(name.value) == "time":
                raise _error(f"STARTS_WITH does not apply to {name.value}", name.column)
            return StartsWith(name, value.value)
        if self.is_kw("IS"):
            self.take()
            negate = self.is_kw("NOT")
            if negate:
                self.take()
            self.expect_kw("NULL")
            return IsNull(name, negate)
        raise self.unexpected("expected an operator (= != < <= > >=, IN, STARTS_WITH, IS NULL)")


def _check_comparison(name: Token, op: str, value: Token) -> None:
    """Refuses a comparison that has no meaning: a built-in compared with the wrong kind of
    literal, a too-long attribute name, an ordering of true/false."""
    kind = BUILTINS.get(name.value)
    if kind == "time":
        if (parse_datetime(value.value) if value.kind == "string" else None) is None:
            got = f", not {shown(value.value)}" if value.kind == "string" else ""
            raise _error(f"{name.value} needs a datetime string such as '2024-05-01T12:00:00Z'{got}", value.column)
    elif kind is not None:
        if value.kind != "string":
            raise _error(f"{name.value} needs a quoted string", value.column)
    elif len(name.value) > MAX_KEY_LENGTH:
        raise _error(f"name {name.value[:20]!r}... is too long", name.column)
    elif op not in ("=", "!=") and value.kind == "bool":
        raise _error(f"{op} does not apply to true/false", value.column)


def parse_condition(text: str) -> Condition:
    """Parses a ``--where`` filter into a checked condition tree
    (:func:`cairn.store.filters.parse_filter` turns it into parametrised SQL).

    Raises:
        InputValidationError: the filter is malformed (:class:`InvalidFilter` names the column).
    """
    if not isinstance(text, str):
        raise InputValidationError("the filter must be a string")
    if len(text) > MAX_FILTER_LENGTH:
        raise InputValidationError(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    check_text(text, "the filter")
    return _Parser(tokenize(text)).parse()
