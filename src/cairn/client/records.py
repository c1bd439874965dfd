"""The small records the client returns: where a start goes, a page of a listing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StartTarget:
    """Where a start of a workflow type goes (:meth:`Client.start_target`)."""

    name: str
    queue: str
    input_schema: dict[str, Any] | None  # registered there; None: no worker has registered the type there yet
    inferred: bool  # no queue was given: the one queue the type is registered on, or the default
    elsewhere: tuple[str, ...] = ()  # the queues the type is registered on, if not this one
    known: tuple[str, ...] = ()  # the registered workflow types, if this one is registered nowhere

    @property
    def warning(self) -> str | None:
        """The one-line warning of a start that no registered worker will run yet."""
        if self.input_schema is not None:
            return None
        hint = f" (registered on: {', '.join(self.elsewhere)})" if self.elsewhere else \
            f" (registered types: {', '.join(self.known)})" if self.known else ""
        return (f"no worker has registered workflow type {self.name!r} on queue {self.queue!r} yet; "
                f"the run waits for one{hint}")


@dataclass
class RunPage:
    """One page of a listing (:meth:`Client.list_page`).

    Attributes:
        runs: the page's runs, newest first.
        total: how many runs match the filters in all.
        skipped: how many of them came on the pages before this one.
        next_page_token: pass it as ``page_token`` for the next page; None on the last.
    """

    runs: list[dict[str, Any]]
    total: int
    skipped: int
    next_page_token: str | None

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "total": self.total, "next_page_token": self.next_page_token}
