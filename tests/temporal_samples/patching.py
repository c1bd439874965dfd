"""Port of samples-python patching/ (activities.py, workflow_1_initial.py to
workflow_4_patch_complete.py, worker.py, starter.py and the stages of its README).

API changes only: imports from ``cairn``; ``Client.connect`` and ``Worker`` take the database
URL; ``task_queue=`` is ``queue=``/``queues=``; ``client.start_workflow`` is
``client.start``, ``client.get_workflow_handle_for`` is ``client.get_handle``, and the
handle's ``id``/``result_run_id`` are ``workflow_id``/``run_id``. The sample's four files each
define ``MyWorkflow``; here they are four classes of one module, each registered under the
type name ``MyWorkflow``. The sample's ``worker.py --workflow X`` (run until Ctrl-C) is
:func:`worker`, a block; its ``starter.py --start-workflow ID`` / ``--query-workflow ID``
are :func:`start_workflow` / :func:`query_workflow`. :func:`main` plays the README's four
stages in order, one worker per stage; where a person running the README waits for the run
they started before querying it, ``main`` waits for its result.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from cairn import Client, Worker, activity, workflow

# ---------------------------------------------------------------- activities.py


@activity.defn
async def pre_patch_activity() -> str:
    return "pre-patch"


@activity.defn
async def post_patch_activity() -> str:
    return "post-patch"


# ---------------------------------------------------------------- workflow_1_initial.py


@workflow.defn(name="MyWorkflow")
class MyWorkflowInitial:
    @workflow.run
    async def run(self) -> None:
        self._result = await workflow.execute_activity(
            pre_patch_activity,
            schedule_to_close_timeout=timedelta(minutes=5),
        )

    @workflow.query
    def result(self) -> str:
        return self._result


# ---------------------------------------------------------------- workflow_2_patched.py


@workflow.defn(name="MyWorkflow")
class MyWorkflowPatched:
    @workflow.run
    async def run(self) -> None:
        if workflow.patched("my-patch"):
            self._result = await workflow.execute_activity(
                post_patch_activity,
                schedule_to_close_timeout=timedelta(minutes=5),
            )
        else:
            self._result = await workflow.execute_activity(
                pre_patch_activity,
                schedule_to_close_timeout=timedelta(minutes=5),
            )

    @workflow.query
    def result(self) -> str:
        return self._result


# ---------------------------------------------------------------- workflow_3_patch_deprecated.py


@workflow.defn(name="MyWorkflow")
class MyWorkflowPatchDeprecated:
    @workflow.run
    async def run(self) -> None:
        workflow.deprecate_patch("my-patch")
        self._result = await workflow.execute_activity(
            post_patch_activity,
            schedule_to_close_timeout=timedelta(minutes=5),
        )

    @workflow.query
    def result(self) -> str:
        return self._result


# ---------------------------------------------------------------- workflow_4_patch_complete.py


@workflow.defn(name="MyWorkflow")
class MyWorkflowPatchComplete:
    @workflow.run
    async def run(self) -> None:
        self._result = await workflow.execute_activity(
            post_patch_activity,
            schedule_to_close_timeout=timedelta(minutes=5),
        )

    @workflow.query
    def result(self) -> str:
        return self._result


# ---------------------------------------------------------------- worker.py

WORKFLOWS = {
    "initial": MyWorkflowInitial,
    "patched": MyWorkflowPatched,
    "patch-deprecated": MyWorkflowPatchDeprecated,
    "patch-complete": MyWorkflowPatchComplete,
}


@asynccontextmanager
async def worker(url: str | None, which: str) -> AsyncIterator[None]:
    """``worker.py --workflow WHICH``, running for the block instead of until Ctrl-C."""
    # Import which workflow based on CLI arg
    if which not in WORKFLOWS:
        raise RuntimeError("Unrecognized workflow")
    my_workflow = WORKFLOWS[which]

    # Run a worker for the workflow
    async with Worker(
        url,
        queues=["patching-task-queue"],
        workflows=[my_workflow],
        activities=[pre_patch_activity, post_patch_activity],
    ):
        # Wait until interrupted
        print("Worker started")
        yield
        print("Shutting down")


# ---------------------------------------------------------------- starter.py

# Since it's just used for typing purposes, it doesn't matter which one we use
MyWorkflow = MyWorkflowInitial


async def start_workflow(client: Client, workflow_id: str) -> None:
    """``starter.py --start-workflow ID``; waits for the run to close, as the README's reader
    does before the next command."""
    handle = await client.start(
        MyWorkflow.run, id=workflow_id, queue="patching-task-queue"
    )
    print(f"Started workflow with ID {handle.workflow_id} and run ID {handle.run_id}")
    await handle.result()


async def query_workflow(client: Client, workflow_id: str) -> None:
    """``starter.py --query-workflow ID``."""
    handle = client.get_handle(workflow_id)
    result = await handle.query(MyWorkflow.result)
    print(f"Query result for ID {handle.workflow_id}: {result}")


# ---------------------------------------------------------------- the README's stages


async def main(url: str | None = None) -> None:
    client = await Client.connect(url)

    # Stage 1 - Initial code
    async with worker(url, "initial"):
        await start_workflow(client, "initial-workflow-id")
        await query_workflow(client, "initial-workflow-id")

    # Stage 2 - Patch the workflow
    async with worker(url, "patched"):
        await start_workflow(client, "patched-workflow-id")
        await query_workflow(client, "initial-workflow-id")
        await query_workflow(client, "patched-workflow-id")

    # Stage 3 - Deprecation
    async with worker(url, "patch-deprecated"):
        await start_workflow(client, "patch-deprecated-workflow-id")
        await query_workflow(client, "patched-workflow-id")
        await query_workflow(client, "patch-deprecated-workflow-id")

    # Stage 4 - Patch complete
    async with worker(url, "patch-complete"):
        await start_workflow(client, "patch-complete-workflow-id")
        await query_workflow(client, "patch-deprecated-workflow-id")
        await query_workflow(client, "patch-complete-workflow-id")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
