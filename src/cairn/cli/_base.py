"""The command group, shared options, error mapping and output helpers."""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import click

from cairn import payloads
from cairn.client import Client
from cairn.errors import (
    CairnError,
    InputValidationError,
    NonDeterminismError,
    WorkflowClosed,
    WorkflowNotFound,
)
from cairn.store.db import redact

T = TypeVar("T")

EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
# A signal to a closed run is bad input too: nothing was written, the caller must change it.
BAD_INPUT_ERRORS = (InputValidationError, WorkflowNotFound, WorkflowClosed)


class Settings:
    """What the group options say, passed to each command through click's context."""

    def __init__(self, database_url: str | None, namespace: str) -> None:
        self.database_url = database_url
        self.namespace = namespace

    async def client(self) -> Client:
        return await Client.connect(self.database_url, namespace=self.namespace)


# Each command's module(s), imported when the command is looked up, so that `cairn list`
# does not import the web view (aiohttp), the worker, rich's tables for batches...: a third
# of the start-up time every command paid (0.5 s of imports, 2026-12-07). A group's
# subcommands may come from two modules (`activity pause` is pauses', `db roles` security's).
# tests/unit/test_cli_lazy.py checks this table against the commands the modules define.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "activity": ("activities", "pauses"), "archive": ("retention",), "batch": ("batches",),
    "breakers": ("breakers",), "cancel": ("runs",), "db": ("admin", "security"), "describe": ("runs",),
    "fake-llm": ("llm",), "history": ("runs",), "limits": ("limits",), "list": ("runs",),
    "namespace": ("retention",),
    "pause": ("pauses",), "pauses": ("pauses",), "purge": ("retention",), "query": ("messages",),
    "replay": ("runs",), "reset": ("operators",), "retry": ("operators",), "schedule": ("schedules",),
    "signal": ("messages",), "start": ("runs",), "terminate": ("runs",), "ui": ("ui",),
    "unpause": ("pauses",), "update": ("messages",), "verify": ("verify",), "worker": ("admin",),
    "workers": ("workers",),
}


class LazyGroup(click.Group):
    """The ``cairn`` group: a command's module is imported when the command is looked up
    (deferred for start-up time: see ``COMMAND_MODULES``)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in COMMAND_MODULES.get(cmd_name, ()):
            importlib.import_module(f"cairn.cli.{module}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted({m for modules in COMMAND_MODULES.values() for m in modules}):
            importlib.import_module(f"cairn.cli.{module}")
        return super().list_commands(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="CAIRN_DATABASE_URL", default=None, metavar="URL",
              help="Postgres to use (env CAIRN_DATABASE_URL). Default: the embedded server.")
@click.option("--namespace", default="default", show_default=True, help="Namespace of the runs.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--unsafe-durability", is_flag=True,
              help="Run on a server with fsync or synchronous_commit off (env CAIRN_ALLOW_UNSAFE_DURABILITY=1).")
@click.version_option(package_name="cairn")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, namespace: str, verbose: int,
         unsafe_durability: bool = False) -> None:
    """Cairn: durable workflows for Python on nothing but Postgres."""
    if unsafe_durability:
        os.environ["CAIRN_ALLOW_UNSAFE_DURABILITY"] = "1"  # read by cairn.store.durability at connect
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings(database_url, namespace)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> click.exceptions.Exit:
    """Prints an error to stderr (passwords masked) and returns the exit to raise."""
    click.echo(f"error: {redact(message)}", err=True)
    return click.exceptions.Exit(code)


def run(coro: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """Runs a command's coroutine, mapping Cairn errors to exit codes and messages.

    ``fast_loop`` runs it on uvloop (the worker does).
    """
    try:
        if fast_loop:
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except NonDeterminismError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None
    except CairnError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def with_client(fn: Callable[..., Awaitable[T]]) -> Callable[..., Coroutine[Any, Any, T]]:
    """Connects a client for the command and closes it afterwards."""

    @functools.wraps(fn)
    async def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> T:
        client = await settings.client()
        try:
            return await fn(client, *args, **kwargs)
        finally:
            await client.close()

    return wrapper


def import_modules(modules: tuple[str, ...]) -> list[Any]:
    """Imports the user's modules (from the current directory too), as a bad-input error."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    out = []
    for name in modules:
        try:
            out.append(importlib.import_module(name))
        except ImportError as exc:
            raise InputValidationError(f"cannot import module {name!r}: {exc}") from None
        except SyntaxError as exc:  # the module's code is the command's input: show where, not a traceback
            raise InputValidationError(
                f"cannot import module {name!r}: {exc.msg} ({exc.filename}, line {exc.lineno})") from None
    return out


def parse_json(text: str | None, what: str, *, max_bytes: int | None = None) -> Any:
    """Parses JSON given inline or as ``@file``; a clear bad-input error if it is not JSON.

    A file is read as UTF-8, at most ``max_bytes`` (default: the payload limit) plus one
    byte, so ``@/dev/zero`` or a huge file is refused without being read whole.
    """
    if text is None:
        return None
    if text.startswith("@"):
        limit = (payloads.MAX_PAYLOAD_BYTES, " (the payload limit, CAIRN_MAX_PAYLOAD_BYTES)") if max_bytes is None \
            else (max_bytes, "")
        text = _read_text_file(text[1:], what, *limit)
    def refuse(constant: str) -> Any:
        raise InputValidationError(f"{what} contains {constant}, which JSON in Postgres cannot store")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise InputValidationError(f"{what} nests too deeply to be a payload") from None
    except json.JSONDecodeError as exc:
        raise InputValidationError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _read_text_file(path: str, what: str, max_bytes: int, limit_name: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputValidationError(f"cannot read {what} file {path!r}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise InputValidationError(f"{what} file {path!r} is larger than {max_bytes} bytes{limit_name}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputValidationError(
            f"{what} file {path!r} is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})") from None


def to_json(value: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        return str(o)

    return json.dumps(value, indent=2, default=default)


def when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def priority_text(level: int | None, key: str | None, weight: float | None) -> str:
    """``2``, ``3, fairness key acme (weight 2)``: a priority as describe shows it."""
    text = str(level or 3)
    if key is not None:
        text += f", fairness key {key}" + (f" (weight {weight:g})" if weight is not None else "")
    return text


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned text table."""
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
