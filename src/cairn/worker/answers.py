"""The worker's query answering (a mixin of :class:`cairn.worker.Worker`).

Queries (``cairn.query_requests``) are answered by the workers that run the run's workflow
type on its queue: from the sticky cache when the cached instance has seen the whole
history, otherwise by replaying the history into a throwaway instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cairn.engine.history import Event
from cairn.engine.instance import WorkflowInstance, replay
from cairn.errors import QueryFailed, WorkflowTaskFailed
from cairn.store.sql import q
from cairn.worker.activities import loop_failed
from cairn.workflow import WorkflowDefinition, WorkflowInfo

if TYPE_CHECKING:
    from cairn.worker import WorkerStats

log = logging.getLogger("cairn.worker")

QUERY_POLL_FACTOR = 5.0         # queries are NOTIFY-driven; the fallback poll is this x poll_interval


class _QueryAnswering:
    """Answers queries (``cairn.query_requests``) for the worker's queues and workflow types.

    A query is answered from the sticky cache when the cached instance has seen the whole
    history (its ``last_seq`` is the history's last seq); otherwise the history is replayed
    into a throwaway instance that is never cached and never recorded. A query to an open
    run whose first workflow task has not been recorded waits for that task.
    """

    _pool: AsyncConnectionPool | None
    _cache: OrderedDict[str, WorkflowInstance]
    _stopping: asyncio.Event
    _query_wake: asyncio.Event
    # A query waits for its run's first workflow task (claim_query_request's `waiting`):
    # a batch that records a new run's first task wakes the answerer, and counts itself in
    # _first_tasks (Worker._claim_and_run).
    _queries_waiting: bool
    _first_tasks: int
    _rng: random.Random
    workflows: dict[str, WorkflowDefinition]
    queues: list[str]
    namespace: str
    poll_interval: float
    stats: WorkerStats

    async def _query_answerer(self) -> None:
        """Answers queries until stopped; woken by the ``cairn_query`` NOTIFY, with a slow
        fallback poll for notifications missed while the listen connection was away."""
        while not self._stopping.is_set():
            self._query_wake.clear()
            try:
                while True:
                    first_tasks = self._first_tasks
                    if await self.answer_query():
                        continue
                    # A first task recorded while the claim ran (seen waiting by it, but
                    # recorded before _queries_waiting could ask for a wake-up): claim again.
                    if not (self._queries_waiting and self._first_tasks != first_tasks):
                        break
            except Exception as exc:
                loop_failed("answering a query", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._query_wake.wait(),
                                       QUERY_POLL_FACTOR * self.poll_interval * self._rng.uniform(0.8, 1.2))

    async def answer_query(self) -> bool:
        """Claims one unanswered query, answers it and commits; False if there was none."""
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("claim_query_request"), {
                "namespace": self.namespace, "queues": self.queues, "workflow_types": sorted(self.workflows)})
            req = await cur.fetchone()
            self._queries_waiting = bool(req and req["waiting"])
            if req is None or req["id"] is None:
                return False
            answer: Any = None
            error: dict[str, Any] | None = None
            try:
                answer = await self._answer(conn, req)
            except Exception as exc:
                cause = exc.cause if isinstance(exc, WorkflowTaskFailed) else exc
                kind = cause.type if isinstance(cause, QueryFailed) else type(cause).__name__
                error = {"type": kind, "message": str(cause)}
                log.info("query %s on %s failed: %s: %s", req["name"], req["workflow_id"], kind, cause)
            await conn.execute(q("answer_query_request"), {
                "id": req["id"], "now": None, "answer": None if error else Jsonb(answer),
                "error": Jsonb(error) if error else None})
        return True

    async def _answer(self, conn: psycopg.AsyncConnection[Any], req: dict[str, Any]) -> Any:
        run_id = str(req["run_id"])
        args = list(req["args"] or [])
        # No await between this check and the call: no workflow task can run in between.
        live = self._cache.get(run_id)
        if live is not None and live.last_seq == req["last_seq"]:
            self.stats.queries_from_cache += 1
            return live.messages.query(req["name"], args)
        cur = await conn.execute(q("read_history"), {"run_id": run_id})
        events = [Event(s, t, d, a) for s, t, d, a in await cur.fetchall()]
        info = WorkflowInfo(
            workflow_id=req["workflow_id"], run_id=run_id, workflow_type=req["workflow_type"],
            queue=req["queue"], namespace=self.namespace, start_time=req["created_at"],
        )
        inst = replay(self.workflows[req["workflow_type"]], info, events)
        try:
            self.stats.queries_replayed += 1
            return inst.messages.query(req["name"], args)
        finally:
            inst.dispose()
