"""Per-key concurrency limits, the client's side: :meth:`Client.limits` gives a
:class:`ConcurrencyLimits`. A key's limit holds across every worker: the database takes and
gives back the slots (see ``store/migrations/0023``)."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Literal

from cairn.errors import InputValidationError
from cairn.options import check_key, check_limit
from cairn.store import limits
from cairn.store.limits import ConcurrencyLimit

if TYPE_CHECKING:
    from cairn.client.client import Client

__all__ = ["KINDS", "ConcurrencyLimit", "ConcurrencyLimits", "LimitKind"]

LimitKind = Literal["workflow", "activity"]
KINDS: tuple[LimitKind, ...] = ("workflow", "activity")


def _kinds(kind: LimitKind | None) -> tuple[LimitKind, ...]:
    if kind is None:
        return KINDS
    if kind not in KINDS:
        raise InputValidationError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return (kind,)


class ConcurrencyLimits:
    """The concurrency limits of the client's namespace, per key.

    A limit of ``kind="workflow"`` counts the key's open, started runs (``Client.start(...,
    concurrency_key=)``); ``kind="activity"`` the key's scheduled activities
    (``workflow.execute_activity(..., concurrency_key=)``), from scheduling to their outcome.
    Without ``kind``, both.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"ConcurrencyLimits(namespace={self.client.namespace!r})"

    async def set(self, key: str, max_running: int, *, kind: LimitKind | None = None) -> int:
        """Sets the key's limit: at most ``max_running`` at once (0 holds them all). Raising
        it lets waiting runs or activities go at once. Returns how many went.

        Raises:
            InputValidationError: an empty key, a negative limit or an unknown kind; nothing
                was written.
        """
        check_key(key, "the concurrency key")
        check_limit(max_running)
        kinds = _kinds(kind)
        released = 0
        for k in kinds:
            released += await self.client._write(
                lambda c, k=k: limits.set_limit(c, self.client.namespace, k, key, max_running),  # type: ignore[misc]
                what=f"setting the {k} limit of {key!r}", check="see `cairn limits list`")
        return released

    async def list(self, key: str | None = None) -> builtins.list[ConcurrencyLimit]:
        """The namespace's keys with a limit, or slots in use, or work waiting (one key with ``key``)."""
        if key is not None:
            check_key(key, "the concurrency key")
        return await self.client._read(lambda c: limits.list_limits(c, self.client.namespace, key))

    async def delete(self, key: str, *, kind: LimitKind | None = None) -> int:
        """Removes the key's limit: its waiting runs or activities go at once. Returns how many."""
        check_key(key, "the concurrency key")
        released = 0
        for k in _kinds(kind):
            released += await self.client._write(
                lambda c, k=k: limits.delete_limit(c, self.client.namespace, k, key),  # type: ignore[misc]
                what=f"removing the {k} limit of {key!r}", check="see `cairn limits list`")
        return released
