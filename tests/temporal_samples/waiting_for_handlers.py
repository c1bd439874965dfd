"""Port of samples-python message_passing/waiting_for_handlers/ (__init__.py, activities.py,
workflows.py, starter.py) in one module.

Temporal's class (``@workflow.run``, an ``@workflow.update`` method) becomes Cairn's
function form (``set_update_handler``); ``exceptions.FailureError`` is Cairn's
``WorkflowFailure``; the starter's ``id_conflict_policy=TERMINATE_EXISTING`` is left out:
Cairn has no such policy, and each run of the sample has closed before the next starts
(so the default start does the same). The worker runs in process, on the sample's queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

from cairn import (
    ApplicationError,
    Client,
    WorkflowFailure,
    WorkflowHandle,
    WorkflowUpdateStage,
    activity,
    workflow,
)

# __init__.py
TASK_QUEUE = "my-task-queue"
WORKFLOW_ID = "my-workflow-id"


class WorkflowExitType(IntEnum):
    SUCCESS = 0
    FAILURE = 1
    CANCELLATION = 2


@dataclass
class WorkflowInput:
    exit_type: WorkflowExitType


@dataclass
class WorkflowResult:
    data: str


# activities.py
@activity.defn
async def activity_executed_by_update_handler() -> None:
    await asyncio.sleep(1)


# workflows.py
def is_workflow_exit_exception(e: BaseException) -> bool:
    """
    True if the exception is of a type that will cause the workflow to exit.

    This is as opposed to exceptions that cause a workflow task failure, which
    are retried automatically.
    """
    return isinstance(e, asyncio.CancelledError | WorkflowFailure)


@workflow.defn(name="WaitingForHandlersWorkflow")
async def waiting_for_handlers_workflow(input: WorkflowInput) -> WorkflowResult:
    state = {"update_started": False}

    async def my_update() -> str:
        state["update_started"] = True
        await workflow.execute_activity(
            activity_executed_by_update_handler,
            start_to_close_timeout=timedelta(seconds=10),
        )
        return "update-result"

    async def my_workflow_application_logic(input: WorkflowInput) -> WorkflowResult:
        # Wait until handlers have started, so that we are demonstrating that we
        # wait for them to finish.
        await workflow.wait_condition(lambda: state["update_started"])
        if input.exit_type == WorkflowExitType.SUCCESS:
            return WorkflowResult(data="workflow-result")
        elif input.exit_type == WorkflowExitType.FAILURE:  # noqa: RET505 (the sample as written)
            raise ApplicationError("deliberately failing workflow")
        elif input.exit_type == WorkflowExitType.CANCELLATION:
            # Block forever; the starter will send a workflow cancellation request.
            await asyncio.Future()
        raise AssertionError("unreachable")

    workflow.set_update_handler("my_update", my_update)
    try:
        result = await my_workflow_application_logic(input)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result
    except BaseException as e:
        if is_workflow_exit_exception(e):
            await workflow.wait_condition(workflow.all_handlers_finished)
        raise


# starter.py
async def starter(client: Client, exit_type: WorkflowExitType) -> None:
    wf_handle = await client.start(
        waiting_for_handlers_workflow,
        WorkflowInput(exit_type=exit_type),
        id=WORKFLOW_ID,
        queue=TASK_QUEUE,
    )
    await _check_run(wf_handle, exit_type)


async def _check_run(wf_handle: WorkflowHandle, exit_type: WorkflowExitType) -> None:
    try:
        up_handle = await wf_handle.start_update(
            "my_update",
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
        )
    except Exception as e:
        print(f"    🔴 caught exception while starting update: {e}: {e.__cause__ or ''}")

    if exit_type == WorkflowExitType.CANCELLATION:
        await wf_handle.cancel()

    try:
        await up_handle.result()
        print("    🟢 caller received update result")
    except Exception as e:
        print(f"    🔴 caught exception while waiting for update result: {e}: {e.__cause__ or ''}")

    try:
        await wf_handle.result()
        print("    🟢 caller received workflow result")
    except BaseException as e:
        print(f"    🔴 caught exception while waiting for workflow result: {e}: {e.__cause__ or ''}")


async def main(client: Client) -> None:
    for exit_type in [
        WorkflowExitType.SUCCESS,
        WorkflowExitType.FAILURE,
        WorkflowExitType.CANCELLATION,
    ]:
        print(f"\n\nworkflow exit type: {exit_type.name}")
        await starter(client, exit_type)
