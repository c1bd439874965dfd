"""The worker's query answering.

Queries (``cairn.query_requests``) are answered by the workers that run the run's workflow
type on its queue: from the sticky cache when the cached instance has seen the whole
history, otherwise by replaying the history into a throwaway instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

from cairn.engine.instance import replay
from cairn.errors import QueryFailed, WorkflowTaskFailed
from cairn.store import tasks as store
from cairn.store.transactions import atomic
from cairn.worker.cache import Cache
from cairn.worker.stats import WorkerStats
from cairn.worker.wakes import Pools, Wakes, loop_failed
from cairn.workflow import WorkflowDefinition, WorkflowInfo

if TYPE_CHECKING:
    from cairn.store.db import Conn
    from cairn.store.tasks import QueryRequest

log = logging.getLogger("cairn.worker")

QUERY_POLL_FACTOR = 5.0         # queries are NOTIFY-driven; the fallback poll is this x poll_interval


class QueryAnswerer:
    """Answers queries (``cairn.query_requests``) for the worker's queues and workflow types.

    A query is answered from the sticky cache when the cached instance has seen the whole
    history (its ``last_seq`` is the history's last seq); otherwise the history is replayed
    into a throwaway instance that is never cached and never recorded. A query to an open
    run waits until the run has taken in what was sent before it (its first workflow task,
    the inbox events older than the query: see ``claim_query_request``).
    """

    def __init__(self, *, pools: Pools, cache: Cache, stats: WorkerStats, wakes: Wakes,
                 workflows: dict[str, WorkflowDefinition], queues: list[str], namespace: str,
                 rng: random.Random) -> None:
        self._pools = pools
        self._cache = cache
        self._stats = stats
        self._wakes = wakes
        self._workflows = workflows
        self._queues = queues
        self._namespace = namespace
        self._rng = rng
        # A query waits for its run's workflow task (claim_query_request's `waiting`): a
        # committed batch of tasks wakes the answerer, and counts itself in _recorded
        # (tasks_recorded).
        self.waiting = False
        self._recorded = 0

    def tasks_recorded(self) -> None:
        """A batch of workflow tasks committed: a query may have waited for it."""
        self._recorded += 1
        if self.waiting:
            self._wakes.query.set()

    async def run(self) -> None:
        """Answers queries until stopped; woken by the ``cairn_query`` NOTIFY, with a slow
        fallback poll for notifications missed while the listen connection was away."""
        wakes = self._wakes
        while not wakes.stopping.is_set():
            wakes.query.clear()
            try:
                while True:
                    recorded = self._recorded
                    if await self.answer_query():
                        continue
                    # A task recorded while the claim ran (seen waiting by it, but recorded
                    # before `waiting` could ask for a wake-up): claim again.
                    if not (self.waiting and self._recorded != recorded):
                        break
            except Exception as exc:
                loop_failed("answering a query", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakes.query.wait(),
                                       QUERY_POLL_FACTOR * wakes.poll_interval * self._rng.uniform(0.8, 1.2))

    async def answer_query(self) -> bool:
        """Claims one unanswered query, answers it and commits; False if there was none."""
        async with atomic(self._pools.main()) as conn:
            req, self.waiting = await store.claim_query(
                conn, namespace=self._namespace, queues=self._queues, workflow_types=sorted(self._workflows))
            if req is None:
                return False
            answer: Any = None
            error: dict[str, Any] | None = None
            try:
                answer = await self._answer(conn, req)
            except Exception as exc:
                cause = exc.cause if isinstance(exc, WorkflowTaskFailed) else exc
                kind = cause.type if isinstance(cause, QueryFailed) else type(cause).__name__
                error = {"type": kind, "message": str(cause)}
                log.info("query %s on %s failed: %s: %s", req.name, req.workflow_id, kind, cause)
            await store.answer_query(conn, req.id, answer=answer, error=error, run_id=req.run_id)
        return True

    async def _answer(self, conn: Conn, req: QueryRequest) -> Any:
        run_id = req.run_id
        args = req.args
        # No await between this check and the call: no workflow task can run in between.
        live = self._cache.get(run_id)
        if live is not None and live.last_seq == req.last_seq:
            self._stats.queries_from_cache += 1
            return live.messages.query(req.name, args)
        events = await store.read_history(conn, run_id)
        info = WorkflowInfo(
            workflow_id=req.workflow_id, run_id=run_id, workflow_type=req.workflow_type,
            queue=req.queue, namespace=self._namespace, start_time=req.created_at,
        )
        inst = replay(self._workflows[req.workflow_type], info, events)
        try:
            self._stats.queries_replayed += 1
            return inst.messages.query(req.name, args)
        finally:
            inst.dispose()
