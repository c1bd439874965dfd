"""The README's asynchronous completion example, run as typed against a real database and
worker: the outside system approves one review and rejects another, by task token."""

from __future__ import annotations

import pytest

from cairn import WorkflowFailure
from support import events
from support.readme import readme_module


async def test_the_readme_async_completion_example_runs(client, start_worker, sql, tmp_path):
    demo = readme_module("asynccompletion", tmp_path)
    await start_worker(workflows=[demo.review], activities=[demo.request_approval])
    approved = await client.start(demo.review, "spec.md", id="review-1")
    await demo.decide(client, approve=True)
    assert await approved.result(timeout=10) == "approved"
    rejected = await client.start(demo.review, "plan.md", id="review-2")
    await demo.decide(client, approve=False)
    with pytest.raises(WorkflowFailure) as info:
        await rejected.result(timeout=10)
    assert "rejected" in str(info.value)
    assert [t for _, t, _ in events(sql, approved.run_id) if t.startswith("Activity")] == [
        "ActivityScheduled", "ActivityCompleted"]
