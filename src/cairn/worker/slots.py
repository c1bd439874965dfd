"""The activity slots of a worker: attempts running, promised to eager attempts not yet
started, and about to be given back by the fast-path group being written."""

from __future__ import annotations

import asyncio


class Slots:
    """``concurrency`` activity slots (``Worker(activity_concurrency=...)``)."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.tasks: set[asyncio.Task[None]] = set()  # attempts running
        self.reserved = 0  # promised to eager attempts not yet started
        # Attempts whose outcomes the fast-path group being written records: they give back
        # their slots when it commits (see free_for_eager).
        self.finishing = 0

    def free(self) -> int:
        """Slots neither running nor promised."""
        return self.concurrency - len(self.tasks) - self.reserved

    def free_for_eager(self) -> int:
        """Slots a transaction may lease eagerly: the attempts whose outcomes it records give
        theirs back when it commits, just before the eager attempts start. Counted as free,
        or under load every slot is held by an attempt waiting for its own group and nothing
        is ever leased eagerly (each step then costs a NOTIFY and a claim)."""
        return self.free() + self.finishing

    def reserve(self, n: int) -> None:
        """Promises ``n`` slots to attempts leased eagerly."""
        self.reserved += n

    def unreserve(self, n: int) -> None:
        """``n`` promised slots were taken up (the attempts started) or given up."""
        self.reserved = max(0, self.reserved - n)
