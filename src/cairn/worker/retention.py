"""The worker's retention pass: every :data:`CHECK_SECONDS`, in a task of its own (off the
maintenance loop, as a batch's executor), :func:`cairn.store.retention.purge_expired`
removes the closed runs past their namespace's retention. One worker at a time does it (the
store's advisory lock); the others find the lock taken and wait for the next check.

Each pass then sweeps :data:`SWEEP_SLICES` slices of the payload store
(:func:`cairn.store.retention.sweep`: stored payloads no run links), going on where its last
pass stopped; a worker starts at a random hash, so a fleet's restarts still cover the whole
table. Any worker may sweep at once (a payload another holds is passed over)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from cairn.store import db
from cairn.store import retention as store
from cairn.worker.wakes import loop_failed

log = logging.getLogger("cairn.worker")

CHECK_SECONDS = 60.0  # how often a worker looks for runs past their retention
SWEEP_SLICES = 4  # slices of cairn.store.payloads.SWEEP_SCAN payloads swept per pass (20,000: about 0.1 s)


class Purger:
    """Starts a retention pass when one is due and none runs here; stops it with the worker."""

    def __init__(self, *, check_seconds: float = CHECK_SECONDS, busy: float = store.BUSY_BACKGROUND) -> None:
        self._check = check_seconds
        self._busy = busy
        self._checked = float("-inf")  # loop time of the last pass started
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._swept_to = os.urandom(32)  # where the next payload sweep goes on (hash order)

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
        if self._stop.is_set():
            return
        try:
            swept, self._swept_to = await store.sweep_payloads(pool, after=self._swept_to, slices=SWEEP_SLICES)
        except Exception as exc:
            loop_failed("payload sweep", exc)
            return
        if swept.payloads:
            log.info("retention: swept %d stored payloads no run links (%d bytes)", swept.payloads,
                     swept.stored_bytes)

    async def stop(self) -> None:
        """Ends a pass in progress between two chunks (a chunk in flight rolls back)."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
