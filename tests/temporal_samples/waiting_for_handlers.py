"""Port of samples-python message_passing/waiting_for_handlers/ (__init__.py, activities.py,
workflows.py, starter.py) in one module.

The workflow class and the logic are the sample's. The API changes: imports from ``cairn``;
``exceptions.FailureError`` is ``WorkflowFailure`` (``ApplicationError`` and
``WorkflowCancelled`` derive from it, as Temporal's from ``FailureError``);
``client.WorkflowUpdateStage`` is ``cairn.WorkflowUpdateStage``; the starter takes the
test's client instead of connecting one per exit type; ``start_workflow(..., task_queue=)``
is ``client.start(..., queue=)`` and its ``id_conflict_policy=TERMINATE_EXISTING`` goes:
Cairn has no such policy, and each run of the sample has closed before the next starts (so
the default start does the same). The worker runs in process, on the sample's queue.
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
    # 👉 If you have set additional failure_exception_types you should also
    # check for these here.
    return isinstance(e, (asyncio.CancelledError, WorkflowFailure))


@workflow.defn
class WaitingForHandlersWorkflow:
    @workflow.run
    async def run(self, input: WorkflowInput) -> WorkflowResult:
        """
        This workflow.run method demonstrates a pattern that can be used to wait for signal and
        update handlers to finish in the following circumstances:

        - On successful workflow return
        - On workflow cancellation
        - On workflow failure

        Your workflow can also exit via Continue-As-New. In that case you would usually wait for
        the handlers to finish immediately before the call to continue_as_new(); that's not
        illustrated in this sample.

        If you additionally need to perform cleanup or compensation on workflow failure or
        cancellation, see the message_passing/waiting_for_handlers_and_compensation sample.
        """
        try:
            # 👉 Use this `try...except` style, instead of waiting for message
            # handlers to finish in a `finally` block. The reason is that some
            # exception types cause a workflow task failure as opposed to
            # workflow exit, in which case we do *not* want to wait for message
            # handlers to finish.
            result = await self._my_workflow_application_logic(input)
            await workflow.wait_condition(workflow.all_handlers_finished)
            return result
        # 👉 Catch BaseException since asyncio.CancelledError does not inherit
        # from Exception.
        except BaseException as e:
            if is_workflow_exit_exception(e):
                await workflow.wait_condition(workflow.all_handlers_finished)
            raise

    # Methods below this point can be ignored unless you are interested in
    # the implementation details of this sample.

    def __init__(self) -> None:
        self._update_started = False

    @workflow.update
    async def my_update(self) -> str:
        self._update_started = True
        await workflow.execute_activity(
            activity_executed_by_update_handler,
            start_to_close_timeout=timedelta(seconds=10),
        )
        return "update-result"

    async def _my_workflow_application_logic(
        self, input: WorkflowInput
    ) -> WorkflowResult:
        # The main workflow logic is implemented in a separate method in order
        # to separate "platform-level" concerns (waiting for handlers to finish
        # and error handling) from application logic.

        # Wait until handlers have started, so that we are demonstrating that we
        # wait for them to finish.
        await workflow.wait_condition(lambda: self._update_started)
        if input.exit_type == WorkflowExitType.SUCCESS:
            return WorkflowResult(data="workflow-result")
        elif input.exit_type == WorkflowExitType.FAILURE:  # noqa: RET505  (the sample's code)
            raise ApplicationError("deliberately failing workflow")
        elif input.exit_type == WorkflowExitType.CANCELLATION:
            # Block forever; the starter will send a workflow cancellation request.
            await asyncio.Future()
        raise AssertionError("unreachable")


# starter.py
async def starter(client: Client, exit_type: WorkflowExitType) -> None:
    wf_handle = await client.start(
        WaitingForHandlersWorkflow.run,
        WorkflowInput(exit_type=exit_type),
        id=WORKFLOW_ID,
        queue=TASK_QUEUE,
    )
    await _check_run(wf_handle, exit_type)


async def _check_run(wf_handle: WorkflowHandle, exit_type: WorkflowExitType) -> None:
    try:
        up_handle = await wf_handle.start_update(
            WaitingForHandlersWorkflow.my_update,
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
