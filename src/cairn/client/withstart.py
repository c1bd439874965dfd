"""Signal-with-start and update-with-start on the client's side: the start is checked as
:meth:`cairn.Client.start` checks it (its priority and concurrency key included) before
anything is written, then the start (unless the id has an open run) and the message are one
transaction (:func:`cairn.store.messages.signal_with_start`, ``update_with_start``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cairn.client.checks import validate_id
from cairn.client.handle import WorkflowHandle
from cairn.client.messages import CHECK_SIGNAL, signal_data
from cairn.client.updates import WithStartWorkflowOperation, WorkflowUpdateHandle, WorkflowUpdateStage, check_update
from cairn.errors import InputValidationError
from cairn.options import Priority, seconds
from cairn.store import messages
from cairn.telemetry import tracer

if TYPE_CHECKING:
    from cairn.client.client import Client


async def signal_with_start(client: Client, workflow: Callable[..., Any] | str, args: tuple[Any, ...], *, id: str,
                            signal: str | Callable[..., Any], signal_payload: Any, signal_args: Sequence[Any] | None,
                            queue: str | None, start_delay: timedelta | float | None,
                            priority: Priority | int | None, concurrency_key: str | None) -> WorkflowHandle:
    """See :meth:`cairn.Client.signal_with_start`."""
    if signal_args is not None and signal_payload is not None:
        raise InputValidationError("give signal_payload or signal_args, not both")
    name, data = signal_data(signal, (signal_payload,) if signal_args is None else tuple(signal_args))
    with tracer.start_as_current_span("cairn.signal_with_start") as span:  # the new run's trace root
        params, signature = await client._start_params(workflow, args, validate_id(id), queue, "use_existing",
                                                       start_delay=start_delay, priority=priority,
                                                       concurrency_key=concurrency_key)
        span.set_attributes({"cairn.workflow_id": params["workflow_id"],
                             "cairn.workflow_type": params["workflow_type"], "cairn.signal": name})
        run_id = await client._write(lambda c: messages.signal_with_start(c, params, data),
                                     what=f"signalling (and maybe starting) workflow {id!r}",
                                     check=CHECK_SIGNAL.format(workflow_id=id))
        span.set_attribute("cairn.run_id", run_id)
    return WorkflowHandle(client, params["workflow_id"], run_id, signature)


async def update_with_start(
        client: Client, workflow: Callable[..., Any] | str, args: tuple[Any, ...], *, id: str,
        update: str | Callable[..., Any], update_args: Sequence[Any], update_id: str | None,
        wait_for_stage: WorkflowUpdateStage, queue: str | None, timeout: float | None, result_type: Any,
        priority: Priority | int | None, concurrency_key: str | None,
        operation: WithStartWorkflowOperation | None) -> WorkflowUpdateHandle:
    """See :meth:`cairn.Client.start_update_with_start`; ``operation`` (Temporal's form)
    learns the run's handle, or why the start failed."""
    try:
        name, payload, uid, returns = check_update(update, tuple(update_args), update_id)
    except BaseException as exc:
        if operation is not None:
            operation._failed(exc)
        raise
    wait = seconds(timeout)
    with tracer.start_as_current_span("cairn.update_with_start") as span:  # the new run's trace root
        params, signature = await client._start_params(workflow, args, validate_id(id), queue, "use_existing",
                                                       priority=priority, concurrency_key=concurrency_key)
        span.set_attributes({"cairn.workflow_id": params["workflow_id"],
                             "cairn.workflow_type": params["workflow_type"], "cairn.update": name})
        run_id = await client._write(
            lambda c: messages.update_with_start(c, params, update_id=uid, name=name, args=payload),
            what=f"updating (and maybe starting) workflow {id!r}",
            check=f"ask again with the same update id ({uid}): it is not applied twice")
        span.set_attribute("cairn.run_id", run_id)
    handle = WorkflowHandle(client, params["workflow_id"], run_id, signature)
    if operation is not None:
        operation._started(handle)  # the run is there whatever becomes of the update
    return await handle._await_stage(run_id, uid, name, wait_for_stage, wait, result_type, returns)
