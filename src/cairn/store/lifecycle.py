"""The run lifecycle on the worker's and the client's side: child runs, continue-as-new,
execution timeouts, and what a run's close means for its parent and its children.

Everything here runs inside the transaction of the run's workflow task (or of the
operator's terminate), next to ``record_workflow_tasks``; see ARCHITECTURE.md, "The
life of a workflow task".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn import payloads
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.errors import WorkflowAlreadyStarted, WorkflowIdReuseRefused
from cairn.options import Priority, new_run_id
from cairn.store import clock, runs
from cairn.store import payloads as stored
from cairn.store.sql import q
from cairn.telemetry import trace_carrier

# How a closed child's status reaches its parent when it did not complete.
_FAILURE_OF_STATUS = {
    "cancelled": {"type": "WorkflowCancelled", "message": "the child workflow was cancelled"},
    "timed_out": {"type": "WorkflowTimedOut", "message": "the child workflow passed its execution timeout"},
}


def start_params(*, namespace: str, workflow_id: str, workflow_type: str, queue: str, args: list[Any],
                 id_reuse_policy: str = "allow_duplicate", execution_timeout: float | None = None,
                 execution_deadline: datetime | None = None, parent: dict[str, Any] | None = None,
                 parent_close_policy: str | None = None, continued_from: str | None = None,
                 start_delay: float | None = None, priority: Priority | None = None,
                 concurrency_key: str | None = None) -> dict[str, Any]:
    """The parameters of ``start_workflow`` (and ``open_run_by_workflow_id``) for one run;
    ``start_delay`` seconds hold its first workflow task back; ``priority`` and
    ``concurrency_key`` (checked) place it in its queue or hold it for a slot of the key."""
    data: dict[str, Any] = {"workflow_type": workflow_type, "input": args, "queue": queue,
                            "workflow_id": workflow_id}
    if parent is not None:
        data["parent"] = parent
        data["parent_close_policy"] = parent_close_policy
    if continued_from is not None:
        data["continued_from"] = continued_from
    if execution_timeout is not None:
        data["execution_timeout"] = execution_timeout
    if execution_deadline is not None:
        data["execution_deadline"] = execution_deadline.isoformat()
    if start_delay is not None:
        data["start_delay"] = start_delay  # Temporal's first_workflow_task_backoff
    stored = priority.to_json() if priority is not None else None
    if stored:  # what its activities and children inherit (workflow.info().priority)
        data["priority"] = stored
    if concurrency_key is not None:
        data["concurrency_key"] = concurrency_key
    carrier = trace_carrier()  # the run's trace (ARCHITECTURE.md, "Observability"); not matched on replay
    if carrier:
        data["trace"] = carrier
    return {
        "run_id": new_run_id(), "namespace": namespace, "workflow_id": workflow_id,
        "workflow_type": workflow_type, "queue": queue, "now": None, "data": Jsonb(data),
        "id_reuse_policy": id_reuse_policy, "execution_timeout": execution_timeout,
        "execution_deadline": execution_deadline,
        "parent_run_id": parent["run_id"] if parent else None, "parent_seq": parent["seq"] if parent else None,
        "parent_close_policy": parent_close_policy if parent else None, "continued_from": continued_from,
        "search_attributes": None, "memo": None,  # set by cairn.client.add_visibility
        "start_delay": start_delay,
        "priority": priority.priority_key if priority else None,
        "fairness_key": priority.fairness_key if priority else None,
        "fairness_weight": priority.fairness_weight if priority else None,
        "concurrency_key": concurrency_key,
    }


def kept_place(old: dict[str, Any]) -> dict[str, Any]:
    """A run's priority and concurrency key (a ``run_lifecycle`` row) as :func:`start_params`
    takes them: what a run started from it keeps (continue-as-new, retry; a reset's
    ``insert_reset_run`` takes the columns themselves)."""
    fields = {"priority_key": old["priority"], "fairness_key": old["fairness_key"],
              "fairness_weight": old["fairness_weight"]}
    return {"priority": Priority.from_json({k: v for k, v in fields.items() if v is not None}),
            "concurrency_key": old["concurrency_key"]}


def closing_input(inbox: list[tuple[Any, ...]]) -> tuple[str, str, dict[str, Any], dict[str, Any]] | None:
    """An inbox event that closes the run without running its code, if any:
    (event type, status, event data, failure summary)."""
    for _, etype, data in inbox:
        if etype == h.TERMINATE_REQUESTED:
            reason = str((data or {}).get("reason") or "")
            return h.WORKFLOW_TERMINATED, "terminated", {"reason": reason}, {
                "type": "WorkflowTerminated", "message": reason}
    for _, etype, data in inbox:
        if etype == h.TIMER_FIRED and (data or {}).get("timer_seq") == h.EXECUTION_TIMER_SEQ:
            failure = {"type": "WorkflowTimedOut", "message": "the workflow passed its execution timeout"}
            return h.WORKFLOW_TIMED_OUT, "timed_out", {"failure": failure}, failure
    return None


def parent_event(close_type: str, data: dict[str, Any], status: str) -> tuple[str, dict[str, Any]]:
    """The event that a closed child run puts into its parent's inbox (its outcome)."""
    if close_type == h.WORKFLOW_COMPLETED:
        return h.CHILD_WORKFLOW_COMPLETED, {"result": data.get("result")}
    failure = data.get("failure")
    if close_type == h.WORKFLOW_TERMINATED:
        failure = {"type": "WorkflowTerminated", "message": str(data.get("reason") or "terminated")}
    failure = failure or _FAILURE_OF_STATUS.get(status) or {"type": "WorkflowFailed", "message": status}
    return h.CHILD_WORKFLOW_FAILED, {"failure": {k: failure.get(k) for k in ("type", "message", "details")}}


async def close_family(conn: psycopg.AsyncConnection[Any], run_id: str, close_type: str,
                       data: dict[str, Any], status: str) -> None:
    """After ``run_id`` closed: tells its parent, applies its children's parent close policy."""
    etype, edata = parent_event(close_type, data, status)
    await conn.execute(q("close_family"), {"run_id": run_id, "child_event_type": etype,
                                            "child_event": Jsonb(edata)})
    refs = payloads.find_refs(edata)  # the child's outcome alone: small
    if refs:  # a stored result: the parent's history will refer to it too
        await conn.execute(q("link_parent_payloads"), {"run_id": run_id, "hashes": stored.digests(refs)})


def has_commands(events: list[Event], family: bool) -> bool:
    """Whether :func:`record_commands` has anything to do for these events."""
    return family or any(ev.type in _COMMAND_EVENTS for ev in events)


_COMMAND_EVENTS = frozenset({h.CHILD_WORKFLOW_SCHEDULED, h.CHILD_WORKFLOW_CANCEL_REQUESTED,
                             h.WORKFLOW_CONTINUED_AS_NEW})


async def record_commands(conn: psycopg.AsyncConnection[Any], task: dict[str, Any], namespace: str,
                          events: list[Event], family: bool) -> None:
    """The lifecycle part of recording a workflow task, after ``record_workflow_tasks``:
    starts child runs (and tells the parent, through its own inbox, whether each started),
    forwards child cancel requests, starts the next run of a continue-as-new, and — if the
    run closed and has a parent or children — runs :func:`close_family`."""
    if not has_commands(events, family):
        return
    run_id = str(task["run_id"])
    cancels: list[int] = []
    close: Event | None = None
    for ev in events:
        if ev.type == h.CHILD_WORKFLOW_SCHEDULED:
            await _start_child(conn, task, namespace, ev)
        elif ev.type == h.CHILD_WORKFLOW_CANCEL_REQUESTED:
            cancels.append(int(ev.data["child_seq"]))
        elif ev.type in h.TERMINAL_EVENTS:
            close = ev
    if cancels:
        await conn.execute(q("request_child_cancel"), {"run_id": run_id, "seqs": cancels})
    if close is None:
        return
    if close.type == h.WORKFLOW_CONTINUED_AS_NEW:
        await _continue_as_new(conn, task, namespace, close)
    if family or close.type == h.WORKFLOW_CONTINUED_AS_NEW:
        await close_family(conn, run_id, close.type, close.data, h.TERMINAL_EVENTS[close.type])


async def _start_child(conn: psycopg.AsyncConnection[Any], task: dict[str, Any], namespace: str,
                       ev: Event) -> None:
    d = ev.data
    run_id = str(task["run_id"])
    params = start_params(
        namespace=namespace, workflow_id=d["workflow_id"], workflow_type=d["workflow_type"], queue=d["queue"],
        args=list(d.get("input") or []), id_reuse_policy=d.get("id_reuse_policy") or "allow_duplicate",
        execution_timeout=d.get("execution_timeout"),
        parent={"workflow_id": task["workflow_id"], "run_id": run_id, "seq": ev.seq},
        parent_close_policy=d.get("parent_close_policy") or "terminate",
        # the command carries the child's priority, its parent's inherited (cairn.workflow)
        priority=Priority.from_json(d.get("priority")),
    )
    reply: dict[str, Any] = {"child_seq": ev.seq, "workflow_id": d["workflow_id"]}
    try:
        # No lock_open_run here: the task's transaction never took one (lock=False).
        reply["run_id"] = await runs.start(conn, params, "fail", lock=False)
        etype = h.CHILD_WORKFLOW_STARTED
    except WorkflowIdReuseRefused as exc:
        etype = h.CHILD_WORKFLOW_START_FAILED
        reply["failure"] = {"type": "WorkflowIdReuseRefused", "details": {"run_id": exc.run_id, "status": exc.status},
                            "message": f"workflow id {d['workflow_id']!r} may not be reused (policy "
                                       f"{params['id_reuse_policy']}): its run {exc.run_id} {exc.status}"}
    except WorkflowAlreadyStarted as exc:
        etype = h.CHILD_WORKFLOW_START_FAILED
        reply["failure"] = {"type": "WorkflowAlreadyStarted", "details": {"run_id": exc.run_id},
                            "message": f"workflow {d['workflow_id']!r} is already running (run {exc.run_id})"}
    # The parent's own inbox: the task that recorded the command sees the outcome next.
    await conn.execute(q("signal_run"), {"run_id": run_id, "type": etype, "data": Jsonb(reply)})


async def _continue_as_new(conn: psycopg.AsyncConnection[Any], task: dict[str, Any], namespace: str,
                           ev: Event) -> None:
    run_id = str(task["run_id"])
    cur = conn.cursor(row_factory=dict_row)
    old = await (await cur.execute(q("run_lifecycle"), {"run_id": run_id})).fetchone()
    assert old is not None
    parent = None
    if old["parent_run_id"] is not None:
        parent = {"workflow_id": old["parent_workflow_id"], "run_id": str(old["parent_run_id"]),
                  "seq": old["parent_seq"]}
    params = start_params(
        namespace=namespace, workflow_id=task["workflow_id"], workflow_type=ev.data["workflow_type"],
        queue=ev.data.get("queue") or task["queue"], args=list(ev.data.get("input") or []),
        execution_deadline=old["execution_deadline"], parent=parent,
        parent_close_policy=old["parent_close_policy"], continued_from=run_id,
        # the run's place in its queue and its concurrency key carry over (a slot: its
        # close gave it back in this transaction, the new run takes one or waits)
        **kept_place(old),
    )
    # Search attributes (with this task's upserts, applied earlier in the transaction) and
    # memo carry over; the attributes also go into WorkflowStarted, as at a client start.
    params["search_attributes"] = Jsonb(old["search_attributes"] or {})
    params["memo"] = Jsonb(old["memo"]) if old["memo"] is not None else None
    if old["search_attributes"]:
        params["data"] = Jsonb({**params["data"].obj, "search_attributes": old["search_attributes"]})
    try:
        await runs.start(conn, params, "fail", lock=False)
    except WorkflowAlreadyStarted:  # the old run closed in this transaction: nothing else can hold the id
        raise RuntimeError(f"continue-as-new of run {run_id}: the new run could not be created") from None


# ---------------------------------------------------------------- terminate


@dataclass(frozen=True, slots=True)
class LockedRun:
    """A run whose workflow-task lock this transaction holds (``locked_task_state``)."""

    status: str
    last_seq: int
    inbox: list[tuple[int, str, dict[str, Any]]]


async def lock_task(conn: psycopg.AsyncConnection[Any], run_id: str) -> LockedRun | None:
    """Takes the run's workflow-task lock, waiting for a worker mid-task, so that what the
    transaction appends to the history comes from the one writer the run has; in the
    caller's transaction. None: the run is closed (it has no task row)."""
    params: dict[str, Any] = {"run_id": run_id, "now": clock.now(conn)}
    cur = conn.cursor(row_factory=dict_row)
    for _ in range(10):
        # A worker mid-task may delete the task row while we wait for its lock (the
        # task finished): ensure it again. A closed run gets no row: we stop.
        await conn.execute(q("ensure_workflow_task"), params)
        await conn.execute(q("lock_workflow_task"), params)
        await cur.execute(q("locked_task_state"), {**params, "run_ids": [run_id], "replay": []})
        locked = await cur.fetchone()
        if locked is not None:
            return LockedRun(locked["status"], locked["last_seq"], [tuple(i) for i in locked["inbox"]])
    return None


async def close_terminated(conn: psycopg.AsyncConnection[Any], run_id: str, last_seq: int, reason: str,
                           **data: Any) -> None:
    """Closes a run as terminated (its task lock held, see :func:`lock_task`): appends
    ``WorkflowTerminated`` (with ``reason`` and ``data``), closes the run and its task, tells
    its parent and applies its children's parent close policy."""
    params: dict[str, Any] = {"run_id": run_id, "now": clock.now(conn)}
    event = [{"seq": last_seq + 1, "type": h.WORKFLOW_TERMINATED, "data": {"reason": reason, **data}}]
    await conn.execute(q("append_history"), {**params, "events": Jsonb(event)})
    await conn.execute(q("close_run"), {**params, "status": "terminated",
                                        "failure": Jsonb({"type": "WorkflowTerminated", "message": reason})})
    await conn.execute(q("finish_workflow_task"), params)
    await close_family(conn, run_id, h.WORKFLOW_TERMINATED, {"reason": reason}, "terminated")


async def start_terminating_existing(conn: psycopg.AsyncConnection[Any], params: dict[str, Any], reason: str) -> str:
    """Starts the run, terminating the workflow id's open run first if it has one
    (``id_conflict="terminate_existing"``, Temporal's ``TERMINATE_EXISTING``): the
    termination and the start are one transaction, so the id is never without its run
    and never has two open. Returns the new run's id."""
    async with conn.transaction():
        while True:
            run_id = await runs.start(conn, params, "use_existing")
            if run_id == str(params["run_id"]):
                return run_id
            locked = await lock_task(conn, run_id)  # waits for a worker running its task
            if locked is not None and locked.status == "running":
                await close_terminated(conn, run_id, locked.last_seq, reason)


async def terminate(conn: psycopg.AsyncConnection[Any], run_id: str, reason: str) -> bool:
    """Terminates the open run in one transaction; False (nothing written) if it is closed."""
    async with conn.transaction():
        locked = await lock_task(conn, run_id)
        if locked is None or locked.status != "running":
            raise psycopg.Rollback()  # it closed meanwhile: nothing written
        await close_terminated(conn, run_id, locked.last_seq, reason)
        return True
    return False
