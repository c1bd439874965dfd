"""A synchronous facade over :class:`cairn.Client`, for scripts and sync web apps.

It runs the async client on a private event loop in a background thread.
``SyncClient.start(..., conn=conn)`` takes the caller's *sync* psycopg connection, so a
Django/Flask/SQLAlchemy-core app can start a workflow inside its own transaction.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from cairn.client import (
    Client,
    IdConflictPolicy,
    Pause,
    RunDescription,
    RunPage,
    WorkerInfo,
    WorkflowHandle,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
    add_visibility,
)
from cairn.client.messages import QUERY_TIMEOUT_SECONDS
from cairn.engine.history import Event
from cairn.errors import InputValidationError
from cairn.options import IdReusePolicy, Priority
from cairn.store import runs

T = TypeVar("T")

__all__ = ["SyncClient", "SyncWorkflowHandle", "SyncWorkflowUpdateHandle"]


class SyncClient:
    """The blocking twin of :class:`cairn.Client`; use as a context manager or call close()."""

    def __init__(self, url: str | None = None, *, namespace: str = "default") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cairn-sync", daemon=True)
        self._thread.start()
        try:
            self._client: Client = self._call(Client.connect(url, namespace=namespace))
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def close(self) -> None:
        self._call(self._client.close())
        self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, workflow: Callable[..., Any] | str, *args: Any, result_timeout: float | None = None,
                **options: Any) -> Any:
        """Starts a run and returns its result (see :meth:`cairn.Client.execute`)."""
        return self._call(self._client.execute(workflow, *args, result_timeout=result_timeout, **options))

    def start(self, workflow: Callable[..., Any] | str, *args: Any, id: str | None = None,
              queue: str | None = None, id_conflict: IdConflictPolicy = "fail",
              conn: runs.SyncConn | None = None, search_attributes: Mapping[str, Any] | None = None,
              memo: Mapping[str, Any] | None = None, id_reuse_policy: IdReusePolicy = "allow_duplicate",
              execution_timeout: timedelta | float | None = None,
              start_delay: timedelta | float | None = None, priority: Priority | int | None = None,
              concurrency_key: str | None = None) -> SyncWorkflowHandle:
        """Starts a workflow (see :meth:`cairn.Client.start`); ``conn`` is a sync connection."""
        if conn is None:
            return SyncWorkflowHandle(self, self._call(self._client.start(
                workflow, *args, id=id, queue=queue, id_conflict=id_conflict,
                search_attributes=search_attributes, memo=memo, id_reuse_policy=id_reuse_policy,
                execution_timeout=execution_timeout, start_delay=start_delay, priority=priority,
                concurrency_key=concurrency_key)))
        if id_conflict == "terminate_existing":
            raise InputValidationError("id_conflict='terminate_existing' is not available with conn= "
                                       "(the termination takes the run's task lock): start without conn")
        params, signature = self._call(self._client._start_params(
            workflow, args, id, queue, id_conflict, id_reuse_policy=id_reuse_policy,
            execution_timeout=execution_timeout, start_delay=start_delay, priority=priority,
            concurrency_key=concurrency_key))
        add_visibility(params, search_attributes, memo)
        run_id = runs.start_sync(conn, params, id_conflict)
        return SyncWorkflowHandle(self, WorkflowHandle(self._client, params["workflow_id"], run_id, signature))

    def get_handle(self, workflow_id: str, run_id: str | None = None) -> SyncWorkflowHandle:
        return SyncWorkflowHandle(self, self._client.get_handle(workflow_id, run_id))

    def list(self, **filters: Any) -> list[dict[str, Any]]:
        return self._call(self._client.list(**filters))

    def list_page(self, **filters: Any) -> RunPage:
        """One page of a listing (see :meth:`cairn.Client.list_page`)."""
        return self._call(self._client.list_page(**filters))

    def list_workers(self, *, include_inactive: bool = False, queue: str | None = None) -> builtins.list[WorkerInfo]:
        """The namespace's workers (see :meth:`cairn.Client.list_workers`)."""
        return self._call(self._client.list_workers(include_inactive=include_inactive, queue=queue))

    # -- messages (see cairn.client.messages)

    def signal(self, workflow_id: str, signal: str | Callable[..., Any], *args: Any, run_id: str | None = None) -> None:
        """Signals a workflow's open run (see :meth:`cairn.Client.signal`)."""
        self._call(self._client.signal(workflow_id, signal, *args, run_id=run_id))

    def signal_with_start(self, workflow: Callable[..., Any] | str, *args: Any, id: str,
                          signal: str | Callable[..., Any], signal_payload: Any = None,
                          signal_args: Sequence[Any] | None = None, queue: str | None = None,
                          start_delay: timedelta | float | None = None, priority: Priority | int | None = None,
                          concurrency_key: str | None = None) -> SyncWorkflowHandle:
        """Starts the run unless one is open, and signals it (see :meth:`cairn.Client.signal_with_start`)."""
        return SyncWorkflowHandle(self, self._call(self._client.signal_with_start(
            workflow, *args, id=id, signal=signal, signal_payload=signal_payload, signal_args=signal_args,
            queue=queue, start_delay=start_delay, priority=priority, concurrency_key=concurrency_key)))

    def execute_update_with_start(self, workflow: Callable[..., Any] | str, *args: Any, id: str,
                                  update: str | Callable[..., Any],
                                  update_args: Sequence[Any] = (), update_id: str | None = None,
                                  queue: str | None = None, timeout: float | None = None,
                                  result_type: Any = None, priority: Priority | int | None = None,
                                  concurrency_key: str | None = None) -> Any:
        """Starts the run unless one is open, and updates it (see
        :meth:`cairn.Client.execute_update_with_start`)."""
        return self._call(self._client.execute_update_with_start(
            workflow, *args, id=id, update=update, update_args=update_args, update_id=update_id, queue=queue,
            timeout=timeout, result_type=result_type, priority=priority, concurrency_key=concurrency_key))

    def query(self, workflow_id: str, query: str | Callable[..., Any], *args: Any, run_id: str | None = None,
              timeout: float = QUERY_TIMEOUT_SECONDS) -> Any:
        """Queries a workflow's run (see :meth:`cairn.Client.query`)."""
        return self._call(self._client.query(workflow_id, query, *args, run_id=run_id, timeout=timeout))


    # -- asynchronous activity completion (see cairn.client.activities)

    def complete_activity(self, task_token: str | bytes, result: Any = None) -> None:
        """Completes an activity by its task token (see :meth:`cairn.Client.complete_activity`)."""
        self._call(self._client.complete_activity(task_token, result))

    def fail_activity(self, task_token: str | bytes, error: BaseException | str) -> str:
        """Fails an activity attempt by its task token (see :meth:`cairn.Client.fail_activity`)."""
        return self._call(self._client.fail_activity(task_token, error))

    def heartbeat_activity(self, task_token: str | bytes, details: Any = None) -> None:
        """Heartbeats an activity attempt by its task token (see :meth:`cairn.Client.heartbeat_activity`)."""
        self._call(self._client.heartbeat_activity(task_token, details))

    # -- pauses (see cairn.client.pauses)

    def pause(self, *, activity_type: str | None = None, queue: str | None = None, note: str = "") -> bool:
        """Pauses activity attempts namespace-wide (see :meth:`cairn.Client.pause`)."""
        return self._call(self._client.pause(activity_type=activity_type, queue=queue, note=note))

    def unpause(self, *, activity_type: str | None = None, queue: str | None = None) -> bool:
        """Lifts a :meth:`pause` (see :meth:`cairn.Client.unpause`)."""
        return self._call(self._client.unpause(activity_type=activity_type, queue=queue))

    def list_pauses(self) -> builtins.list[Pause]:
        """Everything paused in the namespace (see :meth:`cairn.Client.list_pauses`)."""
        return self._call(self._client.list_pauses())


class SyncWorkflowHandle:
    """The blocking twin of :class:`cairn.WorkflowHandle`."""

    def __init__(self, client: SyncClient, handle: WorkflowHandle) -> None:
        self._client = client
        self.handle = handle

    @property
    def workflow_id(self) -> str:
        return self.handle.workflow_id

    @property
    def run_id(self) -> str | None:
        return self.handle.run_id

    def result(self, timeout: float | None = None) -> Any:
        return self._client._call(self.handle.result(timeout))

    def describe(self) -> RunDescription:
        return self._client._call(self.handle.describe())

    def history(self) -> list[Event]:
        return self._client._call(self.handle.history())

    def cancel(self, reason: str = "") -> None:
        self._client._call(self.handle.cancel(reason))

    def terminate(self, reason: str = "") -> None:
        self._client._call(self.handle.terminate(reason))

    def signal(self, signal: str | Callable[..., Any], *args: Any) -> None:
        self._client._call(self.handle.signal(signal, *args))

    def pause(self, note: str = "") -> None:
        """Pauses the run (see :meth:`cairn.WorkflowHandle.pause`)."""
        self._client._call(self.handle.pause(note))

    def unpause(self) -> bool:
        return self._client._call(self.handle.unpause())

    def pause_activity(self, seq: int, note: str = "") -> None:
        self._client._call(self.handle.pause_activity(seq, note))

    def unpause_activity(self, seq: int, *, reset_attempts: bool = False) -> bool:
        return self._client._call(self.handle.unpause_activity(seq, reset_attempts=reset_attempts))

    def fail_activity(self, seq: int, message: str = "failed by an operator", *,
                      type: str = "ActivityFailedByOperator", details: Any = None) -> None:
        self._client._call(self.handle.fail_activity(seq, message, type=type, details=details))

    def query(self, query: str | Callable[..., Any], *args: Any, timeout: float = QUERY_TIMEOUT_SECONDS) -> Any:
        return self._client._call(self.handle.query(query, *args, timeout=timeout))

    def execute_update(self, update: str | Callable[..., Any], *args: Any, id: str | None = None,
                       timeout: float | None = None, result_type: Any = None) -> Any:
        """Sends an update and returns its result (see :meth:`cairn.WorkflowHandle.execute_update`)."""
        return self._client._call(self.handle.execute_update(update, *args, id=id, timeout=timeout,
                                                             result_type=result_type))

    def start_update(self, update: str | Callable[..., Any], *args: Any, id: str | None = None,
                     wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.ACCEPTED,
                     timeout: float | None = None, result_type: Any = None) -> SyncWorkflowUpdateHandle:
        """Sends an update and waits for ``wait_for_stage`` (see :meth:`cairn.WorkflowHandle.start_update`)."""
        return SyncWorkflowUpdateHandle(self._client, self._client._call(self.handle.start_update(
            update, *args, id=id, wait_for_stage=wait_for_stage, timeout=timeout, result_type=result_type)))


class SyncWorkflowUpdateHandle:
    """The blocking twin of :class:`cairn.WorkflowUpdateHandle`."""

    def __init__(self, client: SyncClient, handle: WorkflowUpdateHandle) -> None:
        self._client = client
        self.handle = handle
        self.id = handle.id

    def result(self, timeout: float | None = None) -> Any:
        return self._client._call(self.handle.result(timeout))
