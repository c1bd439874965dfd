"""Fixtures of the acceptance tests (the helpers live in acceptance_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from acceptance_support import side_tables, workers  # noqa: E402

__all__ = ["side_tables", "workers"]
