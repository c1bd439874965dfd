"""The ``cairn`` command line in-process, through click's runner."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import CliRunner, Result

from cairn.cli import main


def cairn(db_url: str, *args: str) -> Any:
    """Runs ``cairn --database-url DB_URL ARGS`` through click's runner."""
    return CliRunner().invoke(main, ["--database-url", db_url, *args])


async def cairn_in_thread(db_url: str, *args: str) -> Result:
    """:func:`cairn` in a thread, for async tests (the command runs its own event loop)."""
    return await asyncio.to_thread(cairn, db_url, *args)


def ok(ran: Any) -> str:
    """Asserts a CLI run succeeded; returns its stdout."""
    assert ran.exit_code == 0, f"exit {ran.exit_code}\nstdout: {ran.stdout}\nstderr: {ran.stderr}"
    return str(ran.stdout)


def bad_input(ran: Any, *fragments: str) -> None:
    """Asserts a CLI run was refused as bad input (exit 2, a message, no traceback)."""
    assert ran.exit_code == 2, f"exit {ran.exit_code}\nstdout: {ran.stdout}\nstderr: {ran.stderr}"
    assert "Traceback" not in ran.stderr
    for fragment in fragments:
        assert fragment in ran.stderr, ran.stderr
