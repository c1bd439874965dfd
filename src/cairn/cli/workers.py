"""``cairn workers``: the workers of a namespace, from the rows they heartbeat (Temporal's
``task-queue describe`` pollers, Hatchet's workers page)."""

from __future__ import annotations

import click

from cairn.cli._base import Settings, main, run, table, to_json, with_client
from cairn.client import Client
from cairn.client.workers import WorkerInfo, ago

TYPES_SHOWN = 3  # type names listed in a table cell; the rest counted


@main.command("workers")
@click.option("--all", "include_inactive", is_flag=True,
              help="Also stale workers (killed or cut off: no heartbeat within their liveness window) and "
                   "stopped ones, kept for a day.")
@click.option("--queue", default=None, help="Only the workers serving this queue.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def workers_cmd(settings: Settings, include_inactive: bool, queue: str | None, as_json: bool) -> None:
    """List the live workers: identity, host:pid, queues, types, slots in use, version and
    the age of their last heartbeat."""

    @with_client
    async def go(client: Client) -> list[WorkerInfo]:
        return await client.list_workers(include_inactive=include_inactive, queue=queue)

    rows = run(go(settings))
    if as_json:
        click.echo(to_json([w.to_json() for w in rows]))
        return
    if not rows:
        click.echo(f"no {'' if include_inactive else 'live '}workers{f' on queue {queue}' if queue else ''}"
                   + ("" if include_inactive else " (--all shows stale and stopped ones)"))
        return
    click.echo(table([[w.identity, w.status, f"{w.host}:{w.pid}", ",".join(w.queues), _names(w.workflow_types),
                       _names(w.activity_types), _slots(w.workflow_slots_used, w.workflow_slots),
                       _slots(w.activity_slots_used, w.activity_slots), w.version,
                       f"{ago(w.heartbeat_age)} ago"] for w in rows],
                     ["IDENTITY", "STATUS", "HOST:PID", "QUEUES", "WORKFLOWS", "ACTIVITIES", "WF SLOTS",
                      "ACT SLOTS", "VERSION", "HEARTBEAT"]))


def _names(names: list[str]) -> str:
    if not names:
        return "-"
    shown = ",".join(names[:TYPES_SHOWN])
    return shown if len(names) <= TYPES_SHOWN else f"{shown} +{len(names) - TYPES_SHOWN}"


def _slots(used: int, total: int) -> str:
    return f"{used}/{total}" if total else "-"
