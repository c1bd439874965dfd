"""The README's Updates example, run as typed against a real database and worker."""

from __future__ import annotations

import importlib.util

from support.readme import README, readme_blocks


async def test_the_readme_updates_example_runs(client, start_worker, tmp_path):
    (block,) = list(readme_blocks(README.read_text(), "updates"))
    path = tmp_path / block["path"]
    path.write_text(block["body"])
    spec = importlib.util.spec_from_file_location("updates_demo", path)
    assert spec is not None
    assert spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    await start_worker(workflows=[demo.cart])
    assert await demo.shop(client) == ["tea", "milk"]
