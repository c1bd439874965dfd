"""The ``cairn`` command line: thin click commands that parse, call the library, print.

Exit codes: 0 success, 2 bad input (with a message saying what is wrong), 1 runtime error.
Human output by default, ``--json`` on every read command. A command's module is imported
when the command is looked up (``_base.LazyGroup``).
"""

from __future__ import annotations

from cairn.cli._base import main

__all__ = ["main"]
