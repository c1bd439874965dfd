"""Fixtures of the example tests: the examples importable, the CLI in-process, the LLM
provider registry reset after each test."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cairn.cli import main
from cairn.llm import providers as providers_mod

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


@pytest.fixture(autouse=True)
def _no_providers_left() -> Iterator[None]:
    """The examples configure providers for their fake; the next test starts with none."""
    yield
    providers_mod._registry = None


async def cli(db_url: str, *args: str) -> Result:
    """Runs ``cairn --database-url DB ARGS...`` in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, ["--database-url", db_url, *args])
