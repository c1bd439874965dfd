"""Unit-test setup: every WorkflowInstance a test creates is unwound at teardown. (The golden
histories' workflow code is importable as ``golden_workflows`` through pytest's ``pythonpath``.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cairn.engine.instance import WorkflowInstance


@pytest.fixture(autouse=True)
def _dispose_instances(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Unwinds instances left blocked by a test, so no pending task leaks into later tests."""
    created: list[WorkflowInstance] = []
    init = WorkflowInstance.__init__

    def tracking_init(self: WorkflowInstance, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(WorkflowInstance, "__init__", tracking_init)
    yield
    for inst in created:
        inst.dispose()
