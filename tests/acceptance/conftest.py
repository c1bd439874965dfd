"""Fixtures of the acceptance tests (the helpers live in acceptance_support.py and, for
LLMock, llmock_support.py)."""

from __future__ import annotations

from acceptance_support import side_tables, workers
from llmock_support import llmock_serve

__all__ = ["llmock_serve", "side_tables", "workers"]
