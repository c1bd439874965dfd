"""What the worker's loops share: the pools they use, the events that wake them, the
jittered fallback poll, and how a failed pass is logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque

from cairn.errors import DatabaseUnavailable
from cairn.store import db

log = logging.getLogger("cairn.worker")


class Pools:
    """The worker's connection pools, opened by ``Worker.run`` (None until then): the
    engine's (claims, records, outcomes), the lease renewals' own session (a worker that runs
    activities), and the activity code's (breakers, rate limits, streamed text; see
    ``cairn.worker.worker.ACTIVITY_POOL_MAX``)."""

    def __init__(self) -> None:
        self.engine: db.Pool | None = None
        self.leases: db.Pool | None = None
        self.activity: db.Pool | None = None

    def main(self) -> db.Pool:
        """The engine's pool (the worker runs)."""
        assert self.engine is not None, "the worker is not running"
        return self.engine

    def renewals(self) -> db.Pool:
        """The lease renewals' pool: a session no claim, record or outcome write waits in
        front of, so a busy engine pool cannot let a live attempt's lease lapse (the
        engine's in a worker that runs no activities: it renews nothing)."""
        return self.leases if self.leases is not None else self.main()


class Wakes:
    """The events the worker's loops wait on, and who sets which.

    A NOTIFY means one task, so a workflow wake-up goes to one idle poller, not all of them;
    when every poller is busy with a batch, a NOTIFY wakes the latency lane instead
    (``TaskRunner.lane``).
    """

    def __init__(self, poll_interval: float, rng: random.Random) -> None:
        self.poll_interval = poll_interval
        self.rng = rng
        self.workflow: list[asyncio.Event] = []  # one per workflow poller (set by Worker.run)
        self._idle_pollers: deque[int] = deque()  # workflow pollers waiting for a wake-up
        self._pending = False  # a workflow wake-up arrived while every poller was busy
        self.lane = asyncio.Event()  # a NOTIFY arrived while every poller was busy (TaskRunner.lane)
        self._lane_wanted = 0  # how many such NOTIFYs since the lane last claimed
        self.activity = asyncio.Event()
        self.maintenance = asyncio.Event()
        self.query = asyncio.Event()  # a query for one of our queues arrived
        self.flush = asyncio.Event()  # an attempt with a short heartbeat timeout started
        self.stopping = asyncio.Event()
        # The kinds of work ('workflow', 'activity') the namespace ever queued at priority 4 or
        # 5 (cairn.low_lanes, never removed), as the maintenance pass last read them: only
        # then does a claim that came back short look in that lane too (a second statement).
        self.low_lanes: frozenset[str] = frozenset()

    def workflow_poller(self) -> bool:
        """Wakes one idle workflow poller (a NOTIFY means one task, not one per poller);
        False if every poller was busy."""
        while self._idle_pollers:
            event = self.workflow[self._idle_pollers.popleft()]
            if not event.is_set():
                event.set()
                return True
        self._pending = True  # all busy: the next one to finish looks again
        return False

    def workflow_notified(self) -> None:
        """A NOTIFY: a workflow task became ready. An idle poller claims it; if every poller
        is busy running its batch, the latency lane does, at once, rather than after the
        next batch (a new fairness key's task is at the head of the claim order)."""
        if not self.workflow_poller():
            self._lane_wanted += 1
            self.lane.set()

    def take_lane(self) -> int:
        """How many NOTIFYs found every poller busy since the lane last asked (and forgets them)."""
        wanted, self._lane_wanted = self._lane_wanted, 0
        return wanted

    def idle_pollers(self) -> int:
        """How many workflow pollers wait for a wake-up (the worker's heartbeat counts the others busy)."""
        return len(self._idle_pollers)

    def take_pending(self) -> bool:
        """Whether a workflow wake-up arrived while every poller was busy (and forgets it)."""
        pending, self._pending = self._pending, False
        return pending

    async def park(self, index: int) -> None:
        """Workflow poller ``index`` waits, idle, for its wake-up or the fallback poll."""
        self._idle_pollers.append(index)
        await self.idle(self.workflow[index])
        if index in self._idle_pollers:
            self._idle_pollers.remove(index)

    def everything(self) -> None:
        """Wakes every loop (stopping, or back from a lost LISTEN connection)."""
        for ev in self.workflow:
            ev.set()
        if self.stopping.is_set():
            self.lane.set()  # to return: what a lost LISTEN connection missed is the pollers' to claim
        self.activity.set()
        self.maintenance.set()
        self.query.set()

    async def idle(self, event: asyncio.Event) -> None:
        """Waits for a wake-up, or the jittered fallback poll."""
        timeout = self.poll_interval * self.rng.uniform(0.8, 1.2)
        # asyncio.timeout, not wait_for: no task wrapped around the wait at every wake-up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()


def first_line(exc: BaseException) -> str:
    """The first line of an error's text."""
    return str(exc).split("\n", 1)[0]


def loop_failed(what: str, exc: Exception) -> None:
    """Logs a failed pass of one of the worker's loops, which then tries again: a lost
    database connection (a restart, a terminated session: an expected fault) in one line,
    anything else with its traceback."""
    if isinstance(exc, DatabaseUnavailable):
        log.warning("%s: %s; trying again", what, first_line(exc))
    else:
        log.error("%s failed", what, exc_info=exc)
