"""The ``fake_llm`` pytest fixture: a fake LLM provider on loopback, one per test.

Register it in a ``conftest.py`` with ``from cairn.llm.testing import fake_llm``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cairn.llm.fake import FakeLLM

__all__ = ["FakeLLM", "fake_llm"]


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A running fake provider: ``.url``, ``.script(steps, default=None)``, ``.requests()``.

    It serves from its own thread, so tests in other processes (worker subprocesses) can use
    it too, through ``.url`` and its ``/_fake/log`` endpoint.
    """
    fake = FakeLLM()
    try:
        yield fake
    finally:
        fake.close()
