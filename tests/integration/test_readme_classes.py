"""The README's "Workflows as classes" example, run as typed against a real database and worker."""

from __future__ import annotations

from support.readme import readme_module


async def test_the_readme_classes_example_runs(client, start_worker, tmp_path):
    demo = readme_module("classes", tmp_path)
    await start_worker(workflows=[demo.GreetingWorkflow])
    assert await demo.greet(client) == "Bonjour, World! (approved by ann)"
