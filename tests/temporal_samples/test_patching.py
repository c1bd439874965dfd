"""samples-python patching/, ported: the README's four stages, one worker per code version;
each stage's worker answers queries about the previous stage's run by replaying it with its
own code. Then every recorded history is replayed against every version: each version
accepts the histories of the one before it and of itself; the code that dropped the old path
(deprecated, complete) rejects the initial code's history, the initial code every later one,
and the patched code the patch-complete run's (no marker there, so it takes the old path)."""

from __future__ import annotations

import re

import pytest

from cairn import Client, NonDeterminismError
from cairn.testing import replay_history

from . import patching

STAGES = ["initial", "patched", "patch-deprecated", "patch-complete"]


async def test_patching_prints_what_the_readme_shows(db_url, sql, capsys):
    await patching.main(db_url)
    lines = capsys.readouterr().out.splitlines()
    started = [line for line in lines if line.startswith("Started workflow")]
    assert [re.sub(r"run ID \S+$", "run ID <run>", line) for line in lines] == [
        "Worker started",
        "Started workflow with ID initial-workflow-id and run ID <run>",
        "Query result for ID initial-workflow-id: pre-patch",
        "Shutting down",
        "Worker started",
        "Started workflow with ID patched-workflow-id and run ID <run>",
        "Query result for ID initial-workflow-id: pre-patch",
        "Query result for ID patched-workflow-id: post-patch",
        "Shutting down",
        "Worker started",
        "Started workflow with ID patch-deprecated-workflow-id and run ID <run>",
        "Query result for ID patched-workflow-id: post-patch",
        "Query result for ID patch-deprecated-workflow-id: post-patch",
        "Shutting down",
        "Worker started",
        "Started workflow with ID patch-complete-workflow-id and run ID <run>",
        "Query result for ID patch-deprecated-workflow-id: post-patch",
        "Query result for ID patch-complete-workflow-id: post-patch",
        "Shutting down",
    ]
    for line in started:  # the printed run id is the run's
        workflow_id, run_id = re.fullmatch(r"Started workflow with ID (\S+) and run ID (\S+)", line).groups()
        assert sql("SELECT run_id::text FROM cairn.runs WHERE workflow_id = %s", (workflow_id,)) == [(run_id,)]

    markers = sql("SELECT r.workflow_id, h.data FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                  "WHERE h.type = 'MarkerRecorded' ORDER BY r.workflow_id")
    assert markers == [
        ("patch-deprecated-workflow-id", {"kind": "patch", "patch_id": "my-patch", "deprecated": True}),
        ("patched-workflow-id", {"kind": "patch", "patch_id": "my-patch", "deprecated": False}),
    ]

    # Every history against every version of the code.
    client = await Client.connect(db_url)
    histories = {stage: await client.get_handle(f"{stage}-workflow-id").history() for stage in STAGES}
    await client.close()
    rejected = {("initial", "patch-deprecated"), ("initial", "patch-complete"),
                # the patched run went through the new path: the initial code would not
                ("patched", "initial"), ("patch-deprecated", "initial"), ("patch-complete", "initial"),
                # no marker: the patched code takes the old path, as in Temporal
                ("patch-complete", "patched")}
    for recorded in STAGES:
        for code in STAGES:
            replay = lambda: replay_history([patching.WORKFLOWS[code]], histories[recorded])  # noqa: E731, B023
            if (recorded, code) in rejected:
                with pytest.raises(NonDeterminismError):
                    replay()
            else:
                assert replay().events == len(histories[recorded]), (recorded, code)
