"""Fixtures of the example tests: the LLM provider registry reset after each test (the
examples are importable through pytest's ``pythonpath``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cairn.llm import providers as providers_mod


@pytest.fixture(autouse=True)
def _no_providers_left() -> Iterator[None]:
    """The examples configure providers for their fake; the next test starts with none."""
    yield
    providers_mod._registry = None
