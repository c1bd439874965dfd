"""Workers as the client sees them: the listing (:meth:`Client.list_workers`) and what a
run waits for when no live worker serves it (``describe``'s ``unserved``, ``cairn start``).

Liveness is each worker's own (``cairn.workers.live_until``: its last heartbeat plus a few
of its heartbeat periods), read with the database's clock, so the client needs no setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cairn.store import workers as store
from cairn.store.workers import Unserved, WorkerInfo

if TYPE_CHECKING:
    from cairn.client.client import Client

__all__ = ["WorkerInfo", "ago", "unserved", "unserved_entry"]


def ago(seconds: float | None) -> str:
    """A duration for people: ``4 s``, ``3 min``, ``2 h``, ``5 d``."""
    if seconds is None:
        return "?"
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86_400:.0f} d"


def unserved_message(u: Unserved) -> str:
    """One line: what waits, and why no worker serves it (the last one stopped or went
    silent, or none ever registered the type on the queue)."""
    what = f"no live worker serves {u.kind} type {u.type!r} on queue {u.queue!r}"
    if u.last_worker is not None:
        how = (f"stopped {ago(u.last_heartbeat_age)} ago" if u.last_stopped is not None
               else f"no heartbeat for {ago(u.last_heartbeat_age)}")
        return f"{what} (last served by worker {u.last_worker!r} at {u.last_host}:{u.last_pid}, {how})"
    if u.registered_at is not None:
        return f"{what} (last registered there at {u.registered_at.isoformat(timespec='seconds')})"
    return f"{what} (no worker has registered it there)"


def unserved_entry(u: Unserved) -> dict[str, Any]:
    """``RunDescription.unserved``'s entry: kind, type, queue, message, and the worker that
    served it last (identity, last heartbeat), if its row is kept."""
    return {"kind": u.kind, "type": u.type, "queue": u.queue, "message": unserved_message(u),
            "last_worker": u.last_worker, "last_heartbeat": u.last_heartbeat}


async def unserved(client: Client, *, run_id: str | None = None,
                   work: Sequence[tuple[str, str, str]] = ()) -> list[dict[str, Any]]:
    """Of run ``run_id``'s work (its workflow type while open, its pending activities) and
    of the ``(kind, type, queue)`` triples in ``work``, what no live worker serves, as
    :func:`unserved_entry` entries."""
    got = await client._read(lambda c: store.unserved(c, client.namespace, run_id=run_id, work=work))
    return [unserved_entry(u) for u in got]
