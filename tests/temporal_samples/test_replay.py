"""samples-python replay/, ported: three workflows run under one workflow id, then their
histories, fetched by a visibility query, replay without failure; and the README's
exercise: a JustActivity that sleeps before its activity fails to replay its history."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cairn import workflow

from . import replay


@workflow.defn(name="JustActivity")
class JustActivitySleepingFirst:
    """The README's change: ``await asyncio.sleep(0.1)`` just before the activity."""

    @workflow.run
    async def run(self, name: str) -> str:
        workflow.logger.info("Running just activity workflow with parameter %s", name)
        await asyncio.sleep(0.1)
        return await workflow.execute_activity(
            replay.compose_greeting,
            replay.ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
        )


async def test_replay_prints_what_the_sample_prints(db_url, sql, capsys):
    await replay.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "Worker started, ctrl+c to exit",
        "JustActivity Workflow result: Hello, replayer!",
        "JustTimer Workflow result: Slept",
        "TimerThenActivity Workflow result: Hello, replayer!",
        "Shutting down",
        "WorkflowReplayResults(replay_failures={})",
    ]
    runs = sql("SELECT run_id::text, workflow_type FROM cairn.runs WHERE workflow_id = 'replayer-workflow-id' "
               "ORDER BY run_id")
    assert [t for _, t in runs] == ["JustActivity", "JustTimer", "TimerThenActivity"]

    await replay.replayer(db_url, workflows=[JustActivitySleepingFirst, replay.JustTimer, replay.TimerThenActivity])
    printed = capsys.readouterr().out
    assert printed.startswith("WorkflowReplayResults(replay_failures={")
    just_activity = runs[0][0]
    assert f"'{just_activity}': NonDeterminismError(" in printed
    assert "TimerStarted" in printed  # the code now starts a timer where an activity was recorded
    assert printed.count("Error(") == 1  # the other two still replay

