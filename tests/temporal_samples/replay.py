"""Port of samples-python replay/ (worker.py, starter.py, replayer.py).

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.execute_workflow`` is
``client.execute``; the sample's worker (run until Ctrl-C) runs for the block in which
:func:`starter` runs. ``client.list_workflows(query).map_histories()`` is
``client.list(where=query)`` and each run's ``handle.history()``; Temporal's
``Replayer(workflows=...).replay_workflows(histories, raise_on_replay_failure=False)`` is
:func:`replay_workflows`, which replays each history with
``cairn.testing.replay_history`` and collects the failures by run id in a
``WorkflowReplayResults`` (a two-line stand-in for Temporal's type, so that the replayer
prints what the sample's does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cairn import Client, Worker, activity, workflow
from cairn.testing import replay_history

# ---------------------------------------------------------------- worker.py


# While we could use multiple parameters in the activity, Temporal strongly
# encourages using a single dataclass instead which can have fields added to it
# in a backwards-compatible way.
@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


# Basic activity that logs and does string concatenation
@activity.defn
async def compose_greeting(input: ComposeGreetingInput) -> str:
    activity.logger.info("Running activity with parameter %s", input)
    return f"{input.greeting}, {input.name}!"


# A workflow which just runs an activity
@workflow.defn
class JustActivity:
    @workflow.run
    async def run(self, name: str) -> str:
        workflow.logger.info("Running just activity workflow with parameter %s", name)
        return await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
        )


# A workflow which just runs a timer
@workflow.defn
class JustTimer:
    @workflow.run
    async def run(self, name: str) -> str:
        workflow.logger.info("Running just timer workflow with parameter %s", name)
        await asyncio.sleep(0.1)
        return "Slept"


# A workflow which runs a timer then an activity
@workflow.defn
class TimerThenActivity:
    @workflow.run
    async def run(self, name: str) -> str:
        workflow.logger.info(
            "Running timer then activity workflow with parameter %s", name
        )
        await asyncio.sleep(0.1)
        return await workflow.execute_activity(
            compose_greeting,
            ComposeGreetingInput("Hello", name),
            start_to_close_timeout=timedelta(seconds=10),
        )


async def worker_and_starter(url: str | None = None) -> None:
    """worker.py (for the duration of starter.py)."""
    # Uncomment the line below to see logging
    logging.basicConfig(level=logging.INFO)

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["replay-sample"],
        workflows=[JustActivity, JustTimer, TimerThenActivity],
        activities=[compose_greeting],
    ):
        print("Worker started, ctrl+c to exit")
        await starter(url)
        print("Shutting down")


# ---------------------------------------------------------------- starter.py


async def starter(url: str | None = None) -> None:
    # Connect client
    client = await Client.connect(url)

    # Run a few workflows
    # Importantly, normally we would *not* advise re-using the same workflow ID for all of these,
    # but we do this to avoid requiring advanced visibility when we want to fetch all the histories
    # in the replayer.
    result = await client.execute(
        JustActivity.run,
        "replayer",
        id="replayer-workflow-id",
        queue="replay-sample",
    )
    print(f"JustActivity Workflow result: {result}")

    result = await client.execute(
        JustTimer.run,
        "replayer",
        id="replayer-workflow-id",
        queue="replay-sample",
    )
    print(f"JustTimer Workflow result: {result}")

    result = await client.execute(
        TimerThenActivity.run,
        "replayer",
        id="replayer-workflow-id",
        queue="replay-sample",
    )
    print(f"TimerThenActivity Workflow result: {result}")
    await client.close()


# ---------------------------------------------------------------- replayer.py


@dataclass
class WorkflowReplayResults:
    replay_failures: dict[str, Exception] = field(default_factory=dict)


def replay_workflows(workflows: Iterable[Callable[..., Any]], histories: dict[str, list[Any]]
                     ) -> WorkflowReplayResults:
    """Temporal's ``Replayer.replay_workflows(..., raise_on_replay_failure=False)``."""
    workflows = list(workflows)
    results = WorkflowReplayResults()
    for run_id, history in histories.items():
        try:
            replay_history(workflows, history)
        except Exception as err:
            results.replay_failures[run_id] = err
    return results


async def replayer(url: str | None = None,
                   workflows: Iterable[Callable[..., Any]] = (JustActivity, JustTimer, TimerThenActivity)) -> None:
    # Connect client
    client = await Client.connect(url)

    # Fetch the histories of the workflows to be replayed
    runs = await client.list(where='WorkflowId="replayer-workflow-id"')
    histories = {
        run["run_id"]: await client.get_handle(run["workflow_id"], run_id=run["run_id"]).history()
        for run in runs
    }
    results = replay_workflows(workflows, histories)
    print(results)
    await client.close()


async def main(url: str | None = None) -> None:
    """The README's steps: the worker with the starter, then the replayer."""
    await worker_and_starter(url)
    await replayer(url)


if __name__ == "__main__":
    asyncio.run(main())
