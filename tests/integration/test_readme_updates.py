"""The README's Updates example, run as typed against a real database and worker."""

from __future__ import annotations

from support.readme import readme_module


async def test_the_readme_updates_example_runs(client, start_worker, tmp_path):
    demo = readme_module("updates", tmp_path)
    await start_worker(workflows=[demo.cart])
    assert await demo.shop(client) == ["tea", "milk"]
