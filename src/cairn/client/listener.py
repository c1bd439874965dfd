"""The client's close listener: one LISTEN session whose NOTIFYs wake ``result()`` when a
run closes (``cairn_closed``), ``query()`` when its answer is in (``cairn_query_answered``)
and an update's caller when it moves on (``cairn_update``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from cairn import payloads
from cairn.store.listen import listening

WATCHED_RUNS = 10_000  # runs started here whose close the listener tracks (see CloseListener.known_open)
# A watched run keeps the outcome its close NOTIFY carried until result() takes it, up to
# this size (10,000 watched runs: ~10 MB at most); a larger one is read when asked for.
WATCHED_OUTCOME_BYTES = 1024
RECONNECT_SECONDS = 0.5  # the pause before the listener connects again after losing its session


class CloseListener:
    """Owned by a :class:`~cairn.client.Client`: waiters by key (a run id or a query request
    id) and the runs the client started while listening.

    Attributes:
        watched: runs started by the client while the listener was connected: run id ->
            [the listener connection's epoch at the start, a close seen, the outcome it
            carried]. See :meth:`known_open`.
        epoch: bumped at each (re)connection: what was known before it is void.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.task: asyncio.Task[None] | None = None
        self.waiters: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self.listening = asyncio.Event()
        self.epoch = 0
        self.watched: OrderedDict[str, list[Any]] = OrderedDict()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    @contextlib.contextmanager
    def waiter(self, key: str) -> Iterator[asyncio.Future[dict[str, Any] | None]]:
        """A future that the listener resolves when a NOTIFY says the run closed (or the
        query request was answered), with the outcome the NOTIFY carried (None: read it).

        Register it *before* checking the run's status, so a close between the check and
        the wait is not missed.
        """
        fut: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(key, []).append(fut)
        try:
            yield fut
        finally:
            waiters = self.waiters.get(key, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self.waiters.pop(key, None)

    def watch(self, run_id: str) -> None:
        """Notes a run the client is starting, if the listener is connected: it then sees
        its close (``cairn_closed``) whenever ``result()`` is called."""
        if self.task is None or self.task.done() or not self.listening.is_set():
            return
        self.watched[run_id] = [self.epoch, False, None]
        if len(self.watched) > WATCHED_RUNS:
            self.watched.popitem(last=False)  # forgotten: its result() reads the run first

    def known_open(self, run_id: str) -> bool:
        """True if the run was started here while the listener was connected, that same
        connection is still the listener's, and no close NOTIFY has arrived: the run is open
        without asking the database. (Postgres delivers every notification committed after
        LISTEN to that session; a reconnect bumps the epoch and voids the knowledge.)"""
        entry = self.watched.get(run_id)
        return (entry is not None and not entry[1] and entry[0] == self.epoch
                and self.task is not None and not self.task.done())

    def seen_outcome(self, run_id: str) -> dict[str, Any] | None:
        """The outcome a close NOTIFY of a watched run carried, if one arrived."""
        entry = self.watched.get(run_id)
        return entry[2] if entry is not None and entry[1] else None

    async def ensure(self, wait: float | None = None) -> None:
        """Starts the listener and waits for it to connect, for up to 30 s (or ``wait``); a
        listener still away (the database down) is no error: waiters re-read periodically."""
        if self.task is None or self.task.done():
            self.listening.clear()
            self.task = asyncio.create_task(self._listen())
        if not self.listening.is_set():  # the common case costs no wait at all
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30.0 if wait is None else min(wait, 30.0)):
                    await self.listening.wait()

    async def _listen(self) -> None:
        while True:
            try:
                # Query answers (payload: the request id) and update outcomes (payload:
                # update:<run id>:<update id>) wake waiters the same way.
                async with listening(self.url, "cairn_closed", "cairn_update", "cairn_query_answered") as listener:
                    self.epoch += 1
                    self.listening.set()
                    self._wake_all()  # anything that closed while we were away
                    async for payload in listener.notes():
                        self._heard(payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.epoch += 1  # closes may be missed until the next connection
                self._wake_all()
                await asyncio.sleep(RECONNECT_SECONDS)

    def _heard(self, payload: str) -> None:
        # cairn_closed: "<run id>[ <outcome>]"; cairn_query_answered: the request id.
        key, _, text = payload.partition(" ")
        watched = self.watched.get(key)
        waiters = self.waiters.get(key, [])
        outcome = notified_outcome(text) if text and (watched or waiters) else None
        if watched is not None:
            watched[1] = True
            watched[2] = outcome if len(text) <= WATCHED_OUTCOME_BYTES else None
        for fut in waiters:
            if not fut.done():
                fut.set_result(outcome)

    def _wake_all(self) -> None:
        for waiters in self.waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)


def notified_outcome(text: str) -> dict[str, Any] | None:
    """The outcome in a ``cairn_closed`` payload (see record_workflow_tasks): the keys of
    ``run_outcome``'s row."""
    if payloads.REF_KEY in text:  # a stored payload: read the outcome, which resolves it
        return None
    try:
        outcome = json.loads(text)
    except ValueError:
        return None
    keys = {"status", "workflow_type", "last_type", "last_data"}
    return outcome if isinstance(outcome, dict) and keys <= outcome.keys() else None
