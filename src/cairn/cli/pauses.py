"""Pause and resume (:mod:`cairn.client.pauses`): ``cairn pause|unpause WORKFLOW_ID``,
``cairn pause|unpause --activity-type T [--queue Q]``, ``cairn pause|unpause --queue Q``,
``cairn pauses``; one activity: ``cairn activity pause|unpause WORKFLOW_ID SEQ`` (and
``cairn activity fail WORKFLOW_ID --seq N``, in :mod:`cairn.cli.activities`)."""

from __future__ import annotations

from typing import Any

import click

from cairn.cli._base import Settings, main, run, table, to_json, when, with_client
from cairn.cli.activities import activity_group
from cairn.client import Client, Pause

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
run_id_option = click.option("--run-id", default=None, help="A specific run (default: the newest).")
note_option = click.option("--note", default="", help="Why (shown by describe and `cairn pauses`).")
type_option = click.option("--activity-type", default=None, metavar="TYPE",
                           help="Pause the attempts of this activity type (namespace-wide).")
queue_option = click.option("--queue", default=None, metavar="QUEUE",
                            help="Pause the activity attempts on this queue (with --activity-type: "
                                 "of that type on it only).")


def _one_target(workflow_id: str | None, activity_type: str | None, queue: str | None,
                run_id: str | None) -> None:
    if (workflow_id is None) == (activity_type is None and queue is None):
        raise click.UsageError("give a WORKFLOW_ID, or --activity-type and/or --queue")
    if run_id is not None and workflow_id is None:
        raise click.UsageError("--run-id goes with a WORKFLOW_ID")


def _scope(activity_type: str | None, queue: str | None) -> str:
    if activity_type and queue:
        return f"activity type {activity_type} on queue {queue}"
    return f"activity type {activity_type}" if activity_type else f"activities on queue {queue}"


@main.command("pause")
@click.argument("workflow_id", required=False)
@run_id_option
@type_option
@queue_option
@note_option
@json_option
@click.pass_obj
def pause_cmd(settings: Settings, workflow_id: str | None, run_id: str | None, activity_type: str | None,
              queue: str | None, note: str, as_json: bool) -> None:
    """Pause the open run of WORKFLOW_ID: its workflow tasks are not claimed and its
    activities not started until `cairn unpause` (attempts running finish; signals, updates,
    timers and outcomes wait; queries are answered). Or pause activity attempts
    namespace-wide: of --activity-type (on --queue only, if given), or on --queue.

    Exits 2 for a closed or unknown run: nothing is written.
    """
    _one_target(workflow_id, activity_type, queue, run_id)

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        if workflow_id is None:
            new = await client.pause(activity_type=activity_type, queue=queue, note=note)
            return {"activity_type": activity_type, "queue": queue, "paused": True, "already": not new}
        handle = client.get_handle(workflow_id, run_id)
        await handle.pause(note)
        d = await handle.describe()
        return {"workflow_id": workflow_id, "run_id": d.run_id, "paused": d.paused,
                "activities_held": sum(1 for a in d.pending_activities if a.get("paused"))}

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    elif workflow_id is None:
        click.echo(f"paused {_scope(activity_type, queue)}{' (it was already)' if out['already'] else ''}")
    else:
        click.echo(f"paused {workflow_id} (run {out['run_id']}); {out['activities_held']} activity(ies) held")


@main.command("unpause")
@click.argument("workflow_id", required=False)
@run_id_option
@type_option
@queue_option
@json_option
@click.pass_obj
def unpause_cmd(settings: Settings, workflow_id: str | None, run_id: str | None, activity_type: str | None,
                queue: str | None, as_json: bool) -> None:
    """Resume the paused run of WORKFLOW_ID (its work can be claimed at once), or lift a
    pause of --activity-type and/or --queue. Exits 0 when it was not paused (it says so)."""
    _one_target(workflow_id, activity_type, queue, run_id)

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        if workflow_id is None:
            was = await client.unpause(activity_type=activity_type, queue=queue)
            return {"activity_type": activity_type, "queue": queue, "was_paused": was}
        handle = client.get_handle(workflow_id, run_id)
        was = await handle.unpause()
        return {"workflow_id": workflow_id, "run_id": handle.run_id, "was_paused": was}

    out = run(go(settings))
    what = workflow_id if workflow_id is not None else _scope(activity_type, queue)
    click.echo(to_json(out) if as_json else f"resumed {what}" if out["was_paused"] else f"{what} was not paused")


@main.command("pauses")
@json_option
@click.pass_obj
def pauses_cmd(settings: Settings, as_json: bool) -> None:
    """List what is paused in the namespace: runs, activities (an operator's pause, or their
    retry policy's when their attempts ran out, with the last failure), activity types and
    queues."""

    @with_client
    async def go(client: Client) -> list[Pause]:
        return await client.list_pauses()

    rows = run(go(settings))
    if as_json:
        click.echo(to_json([p.to_json() for p in rows]))
        return
    if not rows:
        click.echo("nothing is paused")
        return
    # The records, not their JSON: `when` takes the datetime (the JSON's `at` is a string).
    click.echo(table([[
        p.kind, p.workflow_id or "-", str(p.seq) if p.seq is not None else "-", p.type or "*",
        p.queue or "*", p.reason or "-", when(p.at),
        (p.note or "")[:60] + (f" [{(p.last_failure or {}).get('message', '')}]"[:60] if p.last_failure else ""),
    ] for p in rows], ["KIND", "WORKFLOW", "SEQ", "TYPE", "QUEUE", "REASON", "SINCE", "NOTE"]))


@activity_group.command("pause")
@click.argument("workflow_id")
@click.argument("seq", type=int)
@run_id_option
@note_option
@json_option
@click.pass_obj
def activity_pause_cmd(settings: Settings, workflow_id: str, seq: int, run_id: str | None, note: str,
                       as_json: bool) -> None:
    """Pause pending activity SEQ of WORKFLOW_ID's open run: no new attempt starts (one
    running goes on) until `cairn activity unpause`."""

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        handle = client.get_handle(workflow_id, run_id)
        await handle.pause_activity(seq, note)
        return {"workflow_id": workflow_id, "run_id": handle.run_id, "seq": seq, "paused": True}

    out = run(go(settings))
    click.echo(to_json(out) if as_json else f"paused activity {seq} of {workflow_id}")


@activity_group.command("unpause")
@click.argument("workflow_id")
@click.argument("seq", type=int)
@run_id_option
@click.option("--reset-attempts", is_flag=True,
              help="Start again from attempt 1 (always so for an activity whose attempts ran out).")
@json_option
@click.pass_obj
def activity_unpause_cmd(settings: Settings, workflow_id: str, seq: int, run_id: str | None, reset_attempts: bool,
                         as_json: bool) -> None:
    """Resume paused activity SEQ of WORKFLOW_ID: its next attempt is due at once."""

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        handle = client.get_handle(workflow_id, run_id)
        was = await handle.unpause_activity(seq, reset_attempts=reset_attempts)
        return {"workflow_id": workflow_id, "run_id": handle.run_id, "seq": seq, "was_paused": was}

    out = run(go(settings))
    click.echo(to_json(out) if as_json else f"resumed activity {seq} of {workflow_id}" if out["was_paused"]
               else f"activity {seq} of {workflow_id} was not paused")
