"""The (queue, type) pairs a worker's claims scan: only the types it runs.

A claim (``claim_workflow_task``, ``claim_activity_tasks``) takes ready tasks of the
worker's queues *and* of the types it registered, one ordered index scan per pair, and
stops once it has its limit. The pairs are rotated at every claim so that a backlog of one
type cannot starve the others: the scans start at a different pair each time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# The most one claim takes: the per-pair LIMIT written in claim_workflow_task and
# claim_activity_tasks (a constant, for the generic plan's row estimate; see queries.sql).
# The worker's CLAIM_BATCH and its activity claims (at most 50) stay within it.
CLAIM_MAX = 64


class ClaimPairs:
    """A worker's (queue, type) pairs for one kind of task, handed out rotated."""

    def __init__(self, queues: Iterable[str], types: Iterable[str]) -> None:
        self.pairs = [(queue, name) for queue in queues for name in sorted(types)]
        self._turn = 0

    def next(self, limit: int) -> dict[str, Any]:
        """The claim's ``queues`` and ``types`` parameters (two arrays of the same length),
        starting one pair further than the previous claim, and its ``limit``."""
        if not 1 <= limit <= CLAIM_MAX:
            raise ValueError(f"a claim takes 1 to {CLAIM_MAX} tasks, not {limit}")
        k = self._turn % len(self.pairs) if self.pairs else 0
        self._turn += 1
        pairs = self.pairs[k:] + self.pairs[:k]
        return {"queues": [p[0] for p in pairs], "types": [p[1] for p in pairs], "limit": limit}

    def arrays(self) -> tuple[list[str], list[str]]:
        """The pairs as two arrays, unrotated (next_due)."""
        return [p[0] for p in self.pairs], [p[1] for p in self.pairs]
