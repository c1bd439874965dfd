"""The worker's retention pass: every :data:`CHECK_SECONDS`, in a task of its own (off the
maintenance loop, as a batch's executor), :func:`cairn.store.retention.purge_expired`
removes the closed runs past their namespace's retention. One worker at a time does it (the
store's advisory lock); the others find the lock taken and wait for the next check."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cairn.store import db
from cairn.store import retention as store
from cairn.worker.wakes import loop_failed

log = logging.getLogger("cairn.worker")

CHECK_SECONDS = 60.0  # how often a worker looks for runs past their retention


class Purger:
    """Starts a retention pass when one is due and none runs here; stops it with the worker."""

    def __init__(self, *, check_seconds: float = CHECK_SECONDS, busy: float = store.BUSY_BACKGROUND) -> None:
        self._check = check_seconds
        self._busy = busy
        self._checked = float("-inf")  # loop time of the last pass started
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def tick(self, pool: db.Pool) -> None:
        """Called by each maintenance pass: starts a retention pass if one is due."""
        now = asyncio.get_running_loop().time()
        if now - self._checked < self._check or (self._task is not None and not self._task.done()):
            return
        self._checked = now
        self._task = asyncio.create_task(self._pass(pool), name="cairn-retention")

    async def _pass(self, pool: db.Pool) -> None:
        try:
            done = await store.purge_expired(pool, busy=self._busy, stop=self._stop)
        except Exception as exc:
            loop_failed("retention pass", exc)
            return
        for namespace, progress in (done or {}).items():
            if progress.runs:
                log.info("retention: purged %d closed runs (%d events) of namespace %s in %.1f s%s", progress.runs,
                         progress.events, namespace, progress.seconds,
                         f", archived in {len(progress.files)} files" if progress.files else "")

    async def stop(self) -> None:
        """Ends a pass in progress between two chunks (a chunk in flight rolls back)."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
