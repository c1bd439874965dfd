"""Per-key concurrency limits: ``cairn limits set|list|delete``.

A limit of kind ``workflow`` counts a key's open, started runs (``cairn start
--concurrency-key``); ``activity`` its scheduled activities (``workflow.execute_activity(...,
concurrency_key=)``). Without ``--kind``, both.
"""

from __future__ import annotations

from typing import Any

import click

from cairn.cli._base import Settings, main, run, table, to_json, when, with_client
from cairn.client import Client
from cairn.client.limits import KINDS, ConcurrencyLimit

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
kind_option = click.option("--kind", type=click.Choice(KINDS), default=None,
                           help="Runs (workflow) or activities (activity); default: both.")


@main.group("limits")
def limits_group() -> None:
    """Per-key concurrency limits: at most N runs or activities of a key at once, fleet-wide."""


@limits_group.command("set")
@click.argument("key")
@click.argument("max_running", type=int, metavar="MAX")
@kind_option
@json_option
@click.pass_obj
def limits_set(settings: Settings, key: str, max_running: int, kind: Any, as_json: bool) -> None:
    """Allow at most MAX runs (or activities) of KEY at once; waiting ones start as slots free up."""

    @with_client
    async def go(client: Client) -> int:
        return await client.limits.set(key, max_running, kind=kind)

    released = run(go(settings))
    if as_json:
        click.echo(to_json({"key": key, "max_running": max_running, "kinds": [kind] if kind else list(KINDS),
                            "released": released}))
    else:
        click.echo(f"limit of {key}: {max_running} at once ({kind or 'workflows and activities'})"
                   + (f"; {released} waiting let go" if released else ""))


@limits_group.command("list")
@click.argument("key", required=False)
@json_option
@click.pass_obj
def limits_list(settings: Settings, key: str | None, as_json: bool) -> None:
    """The namespace's keys (or KEY): limit, slots in use, waiting runs or activities."""

    @with_client
    async def go(client: Client) -> list[ConcurrencyLimit]:
        return await client.limits.list(key)

    rows = run(go(settings))
    if as_json:
        click.echo(to_json([r.to_json() for r in rows]))
        return
    if not rows:
        click.echo("no concurrency keys in use or limited")
        return
    click.echo(table([[r.key, r.kind, "none" if r.max_running is None else str(r.max_running), str(r.in_use),
                       str(r.waiting), when(r.updated_at)] for r in rows],
                     ["KEY", "KIND", "LIMIT", "IN USE", "WAITING", "UPDATED"]))


@limits_group.command("delete")
@click.argument("key")
@kind_option
@json_option
@click.pass_obj
def limits_delete(settings: Settings, key: str, kind: Any, as_json: bool) -> None:
    """Remove KEY's limit: its waiting runs or activities start at once."""

    @with_client
    async def go(client: Client) -> int:
        return await client.limits.delete(key, kind=kind)

    released = run(go(settings))
    if as_json:
        click.echo(to_json({"key": key, "kinds": [kind] if kind else list(KINDS), "released": released}))
    else:
        click.echo(f"limit of {key} removed" + (f"; {released} waiting let go" if released else ""))
