"""The sticky cache: live workflow instances by run id, least recently used first.

A cached instance is used only when its ``last_seq`` equals the history's (see
ARCHITECTURE.md, "Invariants": cache and replay determinism); an evicted one is disposed of (its tasks unwound).
"""

from __future__ import annotations

from collections import OrderedDict

from cairn.engine.instance import WorkflowInstance


class Cache:
    """Up to ``size`` live instances (LRU)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._live: OrderedDict[str, WorkflowInstance] = OrderedDict()

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._live

    def __len__(self) -> int:
        return len(self._live)

    def get(self, run_id: str) -> WorkflowInstance | None:
        """The run's live instance, if cached (its recency unchanged)."""
        return self._live.get(run_id)

    def touch(self, run_id: str) -> None:
        """Marks a cached run as used just now."""
        self._live.move_to_end(run_id)

    def keep(self, run_id: str, inst: WorkflowInstance) -> None:
        """Caches ``inst`` as the run's latest, evicting the least recently used past the size."""
        self._live[run_id] = inst
        while len(self._live) > self.size:
            _, old = self._live.popitem(last=False)
            old.dispose()

    def evict(self, run_id: str) -> None:
        """Forgets a run's instance (disposing of it)."""
        inst = self._live.pop(run_id, None)
        if inst is not None:
            inst.dispose()

    def clear(self) -> None:
        """Disposes of every instance (the worker stops)."""
        for inst in self._live.values():
            inst.dispose()
        self._live.clear()
