"""The ``cairn`` command line: thin click commands that parse, call the library, print.

Exit codes: 0 success, 2 bad input (with a message saying what is wrong), 1 runtime error.
Human output by default, ``--json`` on every read command.
"""

from __future__ import annotations

from cairn.cli import (  # noqa: F401  (registers the commands)
    activities,
    admin,
    batches,
    breakers,
    llm,
    messages,
    operators,
    pauses,
    retention,
    runs,
    schedules,
    security,
    ui,
    verify,
    workers,
)
from cairn.cli._base import main

__all__ = ["main"]
