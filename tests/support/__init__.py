"""Helpers shared by every test directory: the database, bounded waiting, worker and CLI
processes, a Postgres a test owns. ``from support import ...`` (``tests/`` is on pytest's
``pythonpath``)."""

from support.cli import bad_input, cairn, cairn_in_thread, ok
from support.db import events, outcomes_per_activity, query, resolved, run_status, types_of
from support.paths import HISTORIES, ROOT
from support.postgres import PrivatePostgres, private_pg
from support.waiting import TIMEOUT, wait_for, wait_until
from support.workers import CAIRN, WorkerProc, clean_env, running_worker, spawn_worker

__all__ = [
    "CAIRN", "HISTORIES", "ROOT", "TIMEOUT", "PrivatePostgres", "WorkerProc", "bad_input", "cairn",
    "cairn_in_thread", "clean_env", "events", "ok", "outcomes_per_activity", "private_pg", "query", "resolved",
    "run_status", "running_worker", "spawn_worker", "types_of", "wait_for", "wait_until",
]
