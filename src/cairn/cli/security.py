"""``cairn db roles``: least-privilege Postgres roles (see :mod:`cairn.store.roles`)."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from cairn.cli._base import Settings, run, to_json
from cairn.cli.admin import db_group
from cairn.store import db, roles


@db_group.command("roles")
@click.option("--owner", default=roles.DEFAULT_NAMES["owner"], show_default=True,
              help="Role that owns the schema and runs migrations.")
@click.option("--worker", default=roles.DEFAULT_NAMES["worker"], show_default=True,
              help="Role for workers (no UPDATE/DELETE on history).")
@click.option("--client", default=roles.DEFAULT_NAMES["client"], show_default=True,
              help="Role for clients (start/signal/cancel; cannot lease activities).")
@click.option("--readonly", default=roles.DEFAULT_NAMES["readonly"], show_default=True,
              help="Role that can only SELECT.")
@click.option("--owner-password-env", metavar="VAR", default=None,
              help="Environment variable holding the owner's password (default: no password, for trust set-ups).")
@click.option("--worker-password-env", metavar="VAR", default=None, help="Same, for the worker role.")
@click.option("--client-password-env", metavar="VAR", default=None, help="Same, for the client role.")
@click.option("--readonly-password-env", metavar="VAR", default=None, help="Same, for the read-only role.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def db_roles(settings: Settings, owner: str, worker: str, client: str, readonly: str,
             owner_password_env: str | None, worker_password_env: str | None,
             client_password_env: str | None, readonly_password_env: str | None, as_json: bool) -> None:
    """Create (or update) the owner, worker, client and read-only roles and their grants.

    Run as a superuser after `cairn db migrate`, and again after each migration (it is
    idempotent). Passwords are read from the environment variables you name, never from
    the command line.
    """
    plan = roles.RolePlan(
        names={"owner": owner, "worker": worker, "client": client, "readonly": readonly},
        password_envs={"owner": owner_password_env, "worker": worker_password_env,
                       "client": client_password_env, "readonly": readonly_password_env},
    )

    async def go() -> dict[str, Any]:
        url, _ = db.resolve_url(settings.database_url)
        return await asyncio.to_thread(roles.create_roles, url, plan)

    report = run(go())
    if as_json:
        click.echo(to_json(report))
        return
    for kind, info in report["roles"].items():
        click.echo(f"{kind:9} {info['name']} (password: {info['password']})")
    click.echo(f"granted on {len(report['tables'])} tables; history: worker and client may only SELECT and INSERT")
