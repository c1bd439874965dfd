"""``cairn breakers``: list the circuit breakers shared by the workers, open, close,
disable, enable or reset one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from cairn import breakers
from cairn.cli._base import Settings, fail, main, run, table, to_json, when, with_client
from cairn.client import Client
from cairn.errors import InputValidationError

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@main.group("breakers", invoke_without_command=True)
@json_option
@click.pass_context
def breakers_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the circuit breakers: state, rates, calls in window, open until, transitions."""
    if ctx.invoked_subcommand is not None:
        return
    settings: Settings = ctx.obj

    @with_client
    async def go(client: Client) -> list[dict[str, Any]]:
        async with client.pool.connection() as conn:
            return await breakers.describe(conn)

    rows = run(go(settings))
    if as_json:
        click.echo(to_json(rows))
        return
    if not rows:
        click.echo("no breakers yet")
        return

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:g}%"

    click.echo(table([[b["name"], b["state"], str(b["generation"]), rate(b["failure_rate"]), rate(b["slow_rate"]),
                       str(b["calls_in_window"]), when(b["open_until"]), str(b["consecutive_opens"]),
                       " ".join(f"{k}={v}" for k, v in b["counters"].items())] for b in rows],
                     ["NAME", "STATE", "GEN", "FAILURES", "SLOW", "CALLS", "OPEN UNTIL", "OPENS", "COUNTERS"]))
    for b in rows:
        if b["transitions"]:
            click.echo(f"\n{b['name']}:")
            for t in b["transitions"]:
                click.echo(f"  {when(t['at'])}  {t['from_state']} -> {t['to_state']} (gen {t['generation']}): "
                           f"{t['reason']}")


def _until(until: str | None, for_seconds: float | None) -> datetime | None:
    """The time of --until (checked); --for is checked here and counted on the database's clock."""
    if until is not None and for_seconds is not None:
        raise InputValidationError("give at most one of --until and --for")
    if for_seconds is not None:
        if not for_seconds > 0 or for_seconds == float("inf"):
            raise InputValidationError(f"--for must be a positive number of seconds, got {for_seconds!r}")
        return None
    if until is not None:
        try:
            at = datetime.fromisoformat(until)
        except ValueError:
            raise InputValidationError(f"--until {until!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00Z)") \
                from None
        at = at if at.tzinfo else at.astimezone()  # a naive time is local time
        if at <= datetime.now(UTC):
            raise InputValidationError(f"--until {until!r} is in the past")
        return at
    return None


def _operate(settings: Settings, name: str, verb: str, action: Any, as_json: bool) -> None:
    @with_client
    async def go(client: Client) -> dict[str, Any]:
        async with client.pool.connection() as conn:
            await action(conn)
            rows = [b for b in await breakers.describe(conn, events=1) if b["name"] == name]
        return rows[0] if rows else {"name": name, "state": "forgotten"}

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    else:
        until = f" until {when(out.get('open_until'))}" if out.get("open_until") else ""
        click.echo(f"breaker {name} {verb}: {out['state']}{until}")


@breakers_cmd.command("open")
@click.argument("name")
@click.option("--until", default=None, metavar="ISO", help="Open until this time, then probe (half-open).")
@click.option("--for", "for_seconds", type=float, default=None, metavar="SECONDS",
              help="Open for this many seconds, then probe (half-open).")
@json_option
@click.pass_obj
def open_cmd(settings: Settings, name: str, until: str | None, for_seconds: float | None, as_json: bool) -> None:
    """Open breaker NAME: forced open until closed, or open until a time (--until/--for)."""
    try:
        at = _until(until, for_seconds)
    except InputValidationError as exc:
        raise fail(str(exc)) from None
    _operate(settings, name, "opened", lambda conn: breakers.force_open(conn, name, until=at, seconds=for_seconds),
             as_json)


@breakers_cmd.command("close")
@click.argument("name")
@json_option
@click.pass_obj
def close_cmd(settings: Settings, name: str, as_json: bool) -> None:
    """Close breaker NAME (fresh window; recovery timeout back to its base)."""
    _operate(settings, name, "closed", lambda conn: breakers.close(conn, name), as_json)


@breakers_cmd.command("disable")
@click.argument("name")
@json_option
@click.pass_obj
def disable_cmd(settings: Settings, name: str, as_json: bool) -> None:
    """Disable breaker NAME: admit every call, record nothing."""
    _operate(settings, name, "disabled", lambda conn: breakers.disable(conn, name), as_json)


@breakers_cmd.command("enable")
@click.argument("name")
@json_option
@click.pass_obj
def enable_cmd(settings: Settings, name: str, as_json: bool) -> None:
    """Enable a disabled breaker NAME again (closed)."""
    _operate(settings, name, "enabled", lambda conn: breakers.enable(conn, name), as_json)


@breakers_cmd.command("reset")
@click.argument("name")
@json_option
@click.pass_obj
def reset_cmd(settings: Settings, name: str, as_json: bool) -> None:
    """Forget breaker NAME (state, window, counters, stored config); the next call recreates it."""
    _operate(settings, name, "reset", lambda conn: breakers.reset(conn, name), as_json)

