"""Fixtures of the acceptance tests (the helpers live in acceptance_support.py)."""

from __future__ import annotations

from acceptance_support import side_tables, workers

__all__ = ["side_tables", "workers"]
