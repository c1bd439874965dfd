"""The hot path's plans, made on young tables, read only the rows of their runs.

A worker session plans each hot statement once (generic plans; PL/pgSQL caches its
statements' plans per session too), with the statistics of that moment. Made on a new
database, those plans hash-joined a sequential scan of a whole table and kept doing so for
the session's life while the table grew (runs) or filled with dead rows (activity_tasks,
inbox): 557 scans of runs and 2,327 of activity_tasks in a 3,000-run W2 (2026-12-07).
Worker sessions now plan without sequential scans (``enable_seqscan=off`` in
``WORKER_CONNECTION_OPTIONS``) and every join is bounded by its run ids (schema 0028).

auto_explain (a contrib module: the pgserver wheel has none, so the test is skipped there)
reports the plan of every statement, nested ones included, as a notice.
"""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from cairn.store.sql import PREPARED, execute_arguments, execute_statement, prepare_statements, q
from cairn.store.tasks import bounds
from cairn.worker import WORKER_CONNECTION_OPTIONS

TABLES = ("runs", "workflow_tasks", "activity_tasks", "inbox", "history", "timers")
SEQ_SCAN = re.compile(r"Seq Scan on (\w+)")
INDEX_SCAN = re.compile(r"Index (?:Only )?Scan (?:Backward )?using \w+ on (\w+)|Bitmap Index Scan on (\w+)")


def unbounded_index_scans(plans: str) -> list[str]:
    """Index scans of TABLES without an index condition: the whole table read in index order."""
    found = []
    lines = plans.splitlines()
    for i, line in enumerate(lines):
        m = INDEX_SCAN.search(line)
        if not m or (m.group(1) or next((t for t in TABLES if (m.group(2) or "").startswith(t + "_")), None)) \
                not in TABLES:
            continue
        depth = len(line) - len(line.lstrip())
        details = []
        for nxt in lines[i + 1:]:
            if len(nxt) - len(nxt.lstrip()) <= depth or "->" in nxt:
                break
            details.append(nxt)
        if not any("Index Cond" in d for d in details):
            found.append(line.strip())
    return found

RUNS = [uuid.UUID(f"00000000-0000-7000-9000-{i:012x}") for i in range(1, 4)]

SEED = (
    """INSERT INTO cairn.runs (run_id, namespace, workflow_id, workflow_type, queue)
       SELECT r, 'default', 'young-' || r, 'one_step', 'default' FROM unnest(%(runs)s::uuid[]) AS r""",
    """INSERT INTO cairn.history (run_id, seq, type, data)
       SELECT r, 1, 'WorkflowStarted', '{"input": []}' FROM unnest(%(runs)s::uuid[]) AS r""",
    """INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type)
       SELECT r, 'default', 'default', 'one_step' FROM unnest(%(runs)s::uuid[]) AS r""",
)


def _activity(seq: int) -> dict[str, object]:
    return {"seq": seq, "activity_type": "inc", "queue": "default", "input": [1],
            "options": {"start_to_close_timeout": 60}, "eager": True}


def _task(run_id: uuid.UUID, seq: int, *, close: bool = False) -> dict[str, object]:
    events = [{"seq": seq, "type": "WorkflowTaskStarted", "data": {"time": "2026-12-07T00:00:00+00:00"}}]
    if close:
        events.append({"seq": seq + 1, "type": "WorkflowCompleted", "data": {"result": 2}})
    else:
        events.append({"seq": seq + 1, "type": "ActivityScheduled", "data": {"activity_type": "inc"}})
    return {"run_id": str(run_id), "events": events, "workflow_id": f"young-{run_id}", "workflow_type": "one_step",
            "workflow_queue": "default", "activities": [] if close else [_activity(seq + 1)],
            "close_status": "completed" if close else None, "failure": None}


def _execute(conn: psycopg.Connection, name: str, params: dict[str, object]) -> None:
    psycopg.ClientCursor(conn).execute(execute_statement(name), execute_arguments(name, params))


def test_the_hot_path_plans_made_on_young_tables_scan_no_table_whole(db_url: str) -> None:
    plans: list[str] = []
    with psycopg.connect(db_url, autocommit=True, options=WORKER_CONNECTION_OPTIONS) as conn:
        try:
            conn.execute("LOAD 'auto_explain'")
        except psycopg.Error:
            pytest.skip("this server has no auto_explain (the embedded pgserver has no contrib modules)")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET auto_explain.log_nested_statements = on")
        conn.execute("SET auto_explain.log_level = notice")
        conn.execute("SET client_min_messages = notice")
        conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        for statement in SEED:
            conn.execute(statement, {"runs": RUNS})
        conn.execute(prepare_statements())
        with conn.transaction(force_rollback=True):
            _execute(conn, "claim_workflow_task", {
                "namespace": "default", "queues": ["default"], "types": ["one_step"], "now": None, "limit": 8,
                "low": False})
            tasks = [_task(RUNS[0], 2), _task(RUNS[1], 2), _task(RUNS[2], 2, close=True)]
            _execute(conn, "record_workflow_tasks", {
                "now": None, "namespace": "default", "inbox_ids": [], "worker": "w", "lease": 30.0,
                "tasks": Jsonb(tasks), **bounds(tasks)})
            outcome = {"type": "ActivityCompleted", "data": {"activity_seq": 3, "result": 2}}
            _execute(conn, "complete_activities_and_lock", {
                "outcomes": Jsonb([{"run_id": str(RUNS[0]), "seq": 3, "token": 1, **outcome}]),
                "replay": [RUNS[0]], "now": None})
            _execute(conn, "complete_activities_speculated", {
                "outcomes": Jsonb([{"run_id": str(RUNS[1]), "seq": 3, "token": 1}]),
                "expected": Jsonb([{"run_id": str(RUNS[1]), "last_seq": 3}])})
            conn.execute(q("locked_task_state"), {"run_ids": RUNS[:2], "replay": [RUNS[0]], "now": None})
            conn.execute(q("renew_activity_leases"), {"now": None, "lease": 30.0, "worker": "w", "beats": Jsonb([
                {"run_id": str(RUNS[0]), "seq": 3, "token": 1, "beat": False, "details": None}])})
            conn.execute(q("place_due_retries"), {"now": None, "limit": 100})  # every 0.5 s per worker
    text = "\n".join(plans)
    for name in PREPARED:
        assert f"cairn_{name}" in text, f"no plan of {name} was reported"
    # the functions' own statements, and locked_task_state (its join, as the locked function's)
    assert text.count("DELETE FROM cairn.activity_tasks a USING o") == 2, text
    assert text.count("FROM cairn.workflow_tasks t JOIN cairn.runs r ON r.run_id = t.run_id") == 2, text
    scanned = sorted({t for t in SEQ_SCAN.findall(text) if t in TABLES})
    assert not scanned, f"sequential scans of {scanned} in a worker's plans:\n{text}"
    assert "lease_owner = $4" in text  # renew_activity_leases
    assert "FROM cairn.retry_places" in text  # place_due_retries
    assert not unbounded_index_scans(text), f"{unbounded_index_scans(text)} in a worker's plans:\n{text}"
