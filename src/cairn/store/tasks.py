"""The worker's workflow-task statements: claims, the batch record, the fast path's group,
failed and finished tasks, the type registry, and the query requests answered from runs.

The hot ones go through :func:`cairn.store.transactions.execute` (prepared, BEGIN and COMMIT
folded in); rows leave as small records (:class:`TaskState`, :class:`Recorded`,
:class:`QueryRequest`). psycopg errors leave translated, by the transaction or connection
the caller runs them in (:mod:`cairn.store.transactions`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.store import clock, db
from cairn.store import lifecycle as _lifecycle
from cairn.store import payloads as stored
from cairn.store.activities import Attempt, attempt_of, resolved
from cairn.store.db import Conn
from cairn.store.sql import q
from cairn.store.transactions import connection, execute

Statement = tuple[str, dict[str, Any]]  # a named statement and its parameters


@dataclass(frozen=True, slots=True)
class TaskState:
    """A run's workflow task, locked for its transaction, with the run's state as of the
    lock: from a claim (``started`` set for a new run), from the fast path's lock
    (``recorded``, ``available_at``, and ``history`` for a run to replay), or made up by
    the speculated fast path from its cache (``now`` None)."""

    run_id: str
    workflow_id: str
    workflow_type: str
    queue: str
    status: str
    last_seq: int
    failures: int = 0
    now: datetime | None = None
    created_at: datetime | None = None
    inbox: tuple[tuple[int, str, Any], ...] = ()
    started: Any = None  # WorkflowStarted's data, for a new run (its history is that alone)
    history: list[Any] | None = None  # (seq, type, data) of the whole history: replay it
    available_at: datetime | None = None
    recorded: tuple[int, ...] = ()  # seqs of the outcomes the fast path's lock recorded
    paused: bool = False  # the fast path's lock found the run paused: record the outcome, run nothing
    # The inbox as the code sees it, stored payloads resolved (None: the inbox holds none);
    # ``inbox`` keeps the references, which is what history records.
    shown_inbox: tuple[tuple[int, str, Any], ...] | None = None


def _state(row: dict[str, Any]) -> TaskState:
    return TaskState(str(row["run_id"]), row["workflow_id"], row["workflow_type"], row["queue"], row["status"],
                     int(row["last_seq"]), row["failures"] or 0, row["now"], row["created_at"],
                     tuple(tuple(item) for item in row["inbox"]), row.get("started"), row.get("history"),
                     row.get("available_at"), tuple(row.get("recorded") or ()), bool(row.get("paused")))


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ``record_workflow_tasks`` returned: the attempts it leased to this worker
    (eager dispatch), the runs whose task it kept (an event arrived that the task did not
    see: it runs again), and the stored payloads linked with it."""

    leased: list[Attempt]
    kept: set[str]
    saved: list[stored.Link]  # stored payloads linked to their runs: stored.remember them after the commit


async def claim(conn: Conn, *, namespace: str, pairs: dict[str, Any], low_lane: bool) -> list[TaskState]:
    """Begins the transaction and claims (locks) ready workflow tasks of the worker's
    (queue, workflow type) ``pairs`` (``ClaimPairs.next``: with their ``limit``): priorities
    1-3, then, if those fell short and ``low_lane`` (the namespace has queued 4-5), 4-5."""
    before = stored.marked()
    params = {"namespace": namespace, **pairs, "now": clock.now(conn), "low": False}
    rows = await execute(conn, "claim_workflow_task", params, begin=True)
    if low_lane and len(rows) < pairs["limit"]:
        rows += await execute(conn, "claim_workflow_task", {**params, "low": True, "limit": pairs["limit"] - len(rows)})
    return await _resolved(conn, before, [_state(row) for row in rows])


async def _resolved(conn: Conn, before: int, states: list[TaskState]) -> list[TaskState]:
    """Task states with the stored payloads of their inbox (as ``shown_inbox``), start and
    history resolved: one statement for them all, and only when a reference was read
    (``cairn.store.payloads``)."""
    if stored.marked() == before or not states:
        return states
    parts = await stored.resolve(conn, [[list(t.inbox), t.started, t.history] for t in states])
    return [replace(t, shown_inbox=tuple(tuple(item) for item in inbox), started=started, history=history)
            for t, (inbox, started, history) in zip(states, parts, strict=True)]


async def complete_and_lock(conn: Conn, *, outcomes: list[dict[str, Any]], replay: list[str]) -> list[TaskState]:
    """Begins the transaction, records the fast path's ``outcomes`` (fenced by their tokens),
    locks their runs' tasks and reads the runs' state in a new snapshot; ``replay``: runs
    whose whole history to read (not cached here)."""
    found: list[stored.Link] = []
    for o in outcomes:
        stored.links(o["run_id"], o.get("data"), found)
    before = stored.marked()
    rows = await execute(conn, "complete_activities_and_lock", {
        "outcomes": Jsonb(outcomes), "now": clock.now(conn), "replay": replay}, begin=True)
    await stored.save(conn, found)  # the outcomes' stored payloads, in their transaction
    return await _resolved(conn, before, [_state(row) for row in rows])


def speculation_check(outcomes: list[dict[str, Any]], expected: list[tuple[str, int]]) -> Statement:
    """``complete_activities_speculated``, to send ahead of :func:`record` (it opens the
    transaction): the outcomes (run_id, seq, token) and each run's expected last seq."""
    return ("complete_activities_speculated", {
        "outcomes": Jsonb([{"run_id": o["run_id"], "seq": o["seq"], "token": o["token"]} for o in outcomes]),
        "expected": Jsonb([{"run_id": run_id, "last_seq": last_seq} for run_id, last_seq in expected])})


def bounds(entries: list[dict[str, Any]]) -> dict[str, str]:
    """``record_workflow_tasks``' bounds: the batch's run ids, and those of the runs it closes
    (every join of the statement is bounded by them: see its comment), as ``uuid[]``
    literals: psycopg's list dumper inspects every list it sends (a tenth of the record's
    client time in a cProfile of W3), and a run id is a canonical UUID."""
    return {"run_ids": "{" + ",".join(str(e["run_id"]) for e in entries) + "}",
            "closing": "{" + ",".join(str(e["run_id"]) for e in entries if e.get("close_status")) + "}"}


async def record(conn: Conn, *, namespace: str, entries: list[dict[str, Any]], inbox_ids: list[int], worker: str,
                 lease: float, commit: bool, ahead: Statement | None = None) -> Recorded:
    """``record_workflow_tasks`` for a batch: one statement, ``entries`` one per task; it
    carries the COMMIT when ``commit`` (and no stored payload follows it); ``ahead`` (the
    speculated fast path's check) opens the transaction with it."""
    found: list[stored.Link] = []
    for entry in entries:
        found += stored.event_links(entry["run_id"], entry["events"])
    before = stored.marked()
    rows = await execute(conn, "record_workflow_tasks", {
        "now": clock.now(conn), "namespace": namespace, "tasks": Jsonb(entries), "inbox_ids": inbox_ids,
        "worker": worker, "lease": lease, **bounds(entries)},
        begin=ahead is not None, commit=commit and not found, ahead=ahead)
    # The stored payloads the events refer to, in the same transaction (the caller's
    # transaction commits it: the COMMIT does not ride with the record then).
    found = await stored.save(conn, found)
    leased: list[Attempt] = []
    kept: set[str] = set()
    for row in rows:
        if row["kept"]:  # an event arrived that this task did not see
            kept.add(str(row["run_id"]))
        else:
            leased.append(attempt_of(row))
    return Recorded(await resolved(conn, before, leased), kept, found)


async def record_extras(conn: Conn, task: TaskState, namespace: str, extras: list[Statement], events: list[Event],
                        family: bool) -> None:
    """What a recorded task that is not plain needs besides ``record_workflow_tasks``: its
    :func:`extra_statements`, then the lifecycle's (children, continue-as-new, family)."""
    for name, params in extras:
        if "now" in params:  # built before the connection was known
            params["now"] = clock.now(conn)
        await conn.execute(q(name), params)
    await _lifecycle.record_commands(conn, _task_dict(task), namespace, events, family)


def _task_dict(task: TaskState) -> dict[str, Any]:
    """What ``cairn.store.lifecycle`` reads of a task."""
    return {"run_id": task.run_id, "workflow_id": task.workflow_id, "workflow_type": task.workflow_type,
            "queue": task.queue, "last_seq": task.last_seq}


async def close_without_code(conn: Conn, task: TaskState, *, namespace: str, inbox_ids: list[int], worker: str,
                             lease: float, closing: tuple[str, str, dict[str, Any], dict[str, Any]]) -> None:
    """Closes a run with its closing event alone (a terminate request, its execution
    timeout: ``cairn.store.lifecycle.closing_input``), and tells its family."""
    etype, status, data, failure = closing
    event = {"seq": task.last_seq + 1, "type": etype, "data": data}
    entries = [{"run_id": task.run_id, "events": [event], "workflow_id": task.workflow_id,
                "workflow_type": task.workflow_type, "workflow_queue": task.queue, "activities": [],
                "close_status": status, "failure": failure}]
    await conn.execute(q("record_workflow_tasks"), {
        "now": clock.now(conn), "namespace": namespace, "inbox_ids": inbox_ids, "worker": worker,
        "lease": lease, "tasks": Jsonb(entries), **bounds(entries)})
    await _lifecycle.close_family(conn, task.run_id, etype, data, status)


async def finish(conn: Conn, run_id: str) -> None:
    """Deletes the task of a run that is no longer running."""
    await conn.execute(q("finish_workflow_task"), {"run_id": run_id, "now": clock.now(conn)})


async def fail(conn: Conn, run_id: str, *, error: dict[str, Any], delay: float) -> None:
    """Records a failed workflow task (history untouched) and backs it off ``delay`` seconds."""
    await conn.execute(q("fail_workflow_task"), {"run_id": run_id, "now": clock.now(conn), "error": Jsonb(error),
                                                 "delay": delay})


async def read_history(conn: Conn, run_id: str) -> list[Event]:
    """A run's whole history, its stored payloads resolved."""
    before = stored.marked()
    cur = await conn.execute(q("read_history"), {"run_id": run_id})
    return await stored.resolve_events(conn, before, [Event(s, t, d, a) for s, t, d, a in await cur.fetchall()])


def extra_statements(task: TaskState, events: list[Event], close_status: str | None,
                     wait_cancels: list[int], rejected: list[dict[str, Any]] | None = None) -> list[Statement]:
    """What a recorded task needs besides ``record_workflow_tasks`` and the lifecycle's
    statements, as (statement name, parameters): search attributes, timers, cancels,
    update outcomes (``rejected``: the updates its validators refused). Most tasks need
    none; then the record carries the COMMIT."""
    base = {"run_id": task.run_id, "now": None}
    updates = update_outcomes(events, rejected or [])
    timers, cancel_timers, cancel_acts = [], [], []
    upserts: dict[str, Any] = {}  # search attributes set (None: removed) by this task
    for ev in events:
        if ev.type == h.TIMER_STARTED:
            timers.append({"seq": ev.seq, "fire_at": ev.data["fire_at"]})
        elif ev.type == h.TIMER_CANCELLED:
            cancel_timers.append(ev.data["timer_seq"])
        elif ev.type == h.ACTIVITY_CANCEL_REQUESTED and ev.data["activity_seq"] not in wait_cancels:
            cancel_acts.append(ev.data["activity_seq"])
        elif ev.type == h.UPSERT_SEARCH_ATTRIBUTES:
            upserts.update(ev.data["search_attributes"])
    out: list[Statement] = []
    if updates:
        out.append(("record_updates", {**base, "updates": Jsonb(updates)}))
    if upserts:
        out.append(("upsert_search_attributes", {
            **base, "set": Jsonb({k: v for k, v in upserts.items() if v is not None}),
            "remove": [k for k, v in upserts.items() if v is None]}))
    if close_status is None:  # a closing task drops its run's timers and activities instead
        if timers:
            out.append(("start_timers", {**base, "workflow_queue": task.queue, "timers": Jsonb(timers)}))
        if cancel_timers:
            out.append(("cancel_timers", {**base, "seqs": cancel_timers}))
        if cancel_acts:
            out.append(("cancel_activities", {**base, "seqs": cancel_acts}))
        if wait_cancels:
            out.append(("request_activity_cancels", {**base, "seqs": wait_cancels}))
    return out


def update_outcomes(events: list[Event], rejected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last status per update id this task reached (accepted, completed, failed), and
    the rejected ones: ``record_updates``'s rows."""
    out: dict[str, dict[str, Any]] = {r["update_id"]: {**r, "status": "rejected", "result": None} for r in rejected}
    for ev in events:
        if ev.type == h.UPDATE_ACCEPTED:
            out[ev.data["update_id"]] = {"update_id": ev.data["update_id"], "status": "accepted",
                                         "result": None, "failure": None}
        elif ev.type == h.UPDATE_COMPLETED:
            failure = ev.data.get("failure")
            out[ev.data["update_id"]] = {"update_id": ev.data["update_id"],
                                         "status": "failed" if failure else "completed",
                                         "result": ev.data.get("result"), "failure": failure}
    return list(out.values())


async def register_types(pool: db.Pool, *, namespace: str, queues: list[str], workflows: dict[str, Any],
                         activities: list[str], module: str | None) -> None:
    """Records the workflow types (name: input JSON schema) and the activity types a worker
    runs on each of its queues."""
    async with connection(pool) as c:
        for name, schema in workflows.items():
            await c.execute(q("register_workflow_type"), {
                "namespace": namespace, "name": name, "queues": queues, "input_schema": Jsonb(schema),
                "module": module,
            })
        if activities:
            await c.execute(q("register_activity_types"), {
                "namespace": namespace, "queues": queues, "names": activities})


# ---------------------------------------------------------------- query requests


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """An unanswered query, locked until its answer commits."""

    id: int
    run_id: str
    name: str
    args: list[Any]
    workflow_id: str
    workflow_type: str
    queue: str
    created_at: datetime
    last_seq: int | None


async def claim_query(conn: Conn, *, namespace: str, queues: list[str],
                      workflow_types: list[str]) -> tuple[QueryRequest | None, bool]:
    """Claims one unanswered query (in the caller's transaction), and whether a query waits
    for its run's first workflow task."""
    cur = conn.cursor(row_factory=dict_row)
    before = stored.marked()
    await cur.execute(q("claim_query_request"), {
        "namespace": namespace, "queues": queues, "workflow_types": workflow_types})
    row = await cur.fetchone()
    waiting = bool(row and row["waiting"])
    if row is None or row["id"] is None:
        return None, waiting
    args = await stored.resolve_if(conn, before, list(row["args"] or []))
    return QueryRequest(row["id"], str(row["run_id"]), row["name"], args, row["workflow_id"],
                        row["workflow_type"], row["queue"], row["created_at"], row["last_seq"]), waiting


async def answer_query(conn: Conn, request_id: int, *, answer: Any, error: dict[str, Any] | None,
                       run_id: str | None = None) -> None:
    """Stores a query's answer (or its error) for the client waiting on it (in the claim's
    transaction, with the stored payload of a large answer, linked to ``run_id``)."""
    if run_id is not None:
        await stored.save(conn, stored.links(run_id, answer))
    await conn.execute(q("answer_query_request"), {
        "id": request_id, "now": clock.now(conn), "answer": None if error else Jsonb(answer),
        "error": Jsonb(error) if error else None})
