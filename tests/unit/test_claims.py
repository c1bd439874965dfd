"""The (queue, type) pairs of a worker's claims (cairn.worker.claims)."""

from __future__ import annotations

import re

import pytest

from cairn import worker
from cairn.store.sql import q
from cairn.worker.claims import CLAIM_MAX, ClaimPairs


def test_pairs_rotate_at_every_claim():
    pairs = ClaimPairs(["q1", "q2"], ["b", "a"])
    first, second = pairs.next(8), pairs.next(8)
    assert first == {"queues": ["q1", "q1", "q2", "q2"], "types": ["a", "b", "a", "b"], "limit": 8}
    assert second == {"queues": ["q1", "q2", "q2", "q1"], "types": ["b", "a", "b", "a"], "limit": 8}
    assert [pairs.next(1)["types"][0] for _ in range(4)] == ["a", "b", "a", "b"]


def test_no_types_no_pairs():
    assert ClaimPairs(["q"], []).next(1) == {"queues": [], "types": [], "limit": 1}


def test_a_claim_takes_at_most_the_constant_written_in_the_statements():
    for name in ("claim_workflow_task", "claim_activity_tasks"):
        # one scan of one priority lane (the lane a parameter: 1-3, or 4-5)
        assert re.findall(r"LIMIT (\d+)", q(name)) == [str(CLAIM_MAX)], name
    assert worker.CLAIM_BATCH <= CLAIM_MAX
    with pytest.raises(ValueError, match="1 to 64"):
        ClaimPairs(["q"], ["t"]).next(CLAIM_MAX + 1)
