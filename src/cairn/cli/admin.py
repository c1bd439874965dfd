"""``cairn db migrate|status|payloads`` and ``cairn worker``."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from cairn.cli._base import Settings, import_modules, main, run, to_json, with_client
from cairn.client import Client
from cairn.errors import InputValidationError
from cairn.logformat import JsonFormatter, use_json
from cairn.store import db
from cairn.store.payloads import PayloadStats, PayloadSweep
from cairn.worker import Worker, collect


@main.group("db")
def db_group() -> None:
    """Set up and inspect the database schema."""


def _url(settings: Settings) -> str:
    url, _ = db.resolve_url(settings.database_url)
    return url


@db_group.command("migrate")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def db_migrate(settings: Settings, as_json: bool) -> None:
    """Apply pending migrations (safe to run concurrently)."""

    async def go() -> list[int]:
        return await asyncio.to_thread(lambda: db.migrate(_url(settings)))

    applied = run(go())
    if as_json:
        click.echo(to_json({"applied": applied}))
    elif applied:
        click.echo(f"applied migrations {', '.join(f'{v:04d}' for v in applied)}")
    else:
        click.echo("schema is up to date")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def db_status(settings: Settings, as_json: bool) -> None:
    """Show applied and pending migrations."""

    async def go() -> db.SchemaStatus:
        def check() -> db.SchemaStatus:
            with db.connect_sync(_url(settings)) as conn:
                return db.schema_status(conn)

        return await asyncio.to_thread(check)

    status = run(go())
    if as_json:
        click.echo(to_json({"applied": status.applied, "pending": status.pending,
                            "changed": status.mismatched, "up_to_date": status.up_to_date}))
        return
    click.echo(f"applied: {', '.join(f'{v:04d}' for v in status.applied) or 'none'}")
    click.echo(f"pending: {', '.join(f'{v:04d}' for v in status.pending) or 'none'}")
    if status.mismatched:
        click.echo(f"changed since applied: {', '.join(f'{v:04d}' for v in status.mismatched)}")
    click.echo("up to date" if status.up_to_date else "run `cairn db migrate`")


@db_group.command("payloads")
@click.argument("workflow_id", required=False)
@click.option("--run-id", default=None, help="That run of WORKFLOW_ID (default: its newest).")
@click.option("--sweep", is_flag=True,
              help="Remove the stored payloads no run links (stored over an hour ago); workers' retention does too.")
@click.option("--dry-run", is_flag=True, help="With --sweep: count what it would remove; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def db_payloads(settings: Settings, workflow_id: str | None, run_id: str | None, sweep: bool, dry_run: bool,
                as_json: bool) -> None:
    """Show the payload store's size: payloads stored once (those above
    CAIRN_STORE_PAYLOAD_BYTES, and LLM chat messages), bytes as JSON and as stored, and the
    runs referring to them; with WORKFLOW_ID, what that run refers to. --sweep removes the
    payloads no run links (left when a purge passed over one a failed write was linking)."""
    if dry_run and not sweep:
        raise click.UsageError("--dry-run goes with --sweep")
    if sweep:
        if workflow_id is not None or run_id is not None:
            raise click.UsageError("--sweep is of the whole store: no WORKFLOW_ID or --run-id")
        _sweep(settings, dry_run, as_json)
        return

    @with_client
    async def go(client: Client) -> PayloadStats:
        return await client.payload_stats(workflow_id, run_id)

    s = run(go(settings))
    if as_json:
        click.echo(to_json(s.to_json()))
        return
    ratio = f" ({s.json_bytes / s.stored_bytes:.1f}x)" if s.stored_bytes else ""
    click.echo(f"{s.payloads} payloads, {s.json_bytes:,} bytes as JSON, {s.stored_bytes:,} stored{ratio}"
               + ("" if workflow_id else f", referred to by {s.runs} runs"))


def _sweep(settings: Settings, dry_run: bool, as_json: bool) -> None:
    @with_client
    async def go(client: Client) -> PayloadSweep:
        return await client.sweep_payloads(dry_run=dry_run)

    swept = run(go(settings))
    if as_json:
        click.echo(to_json({"dry_run": dry_run, **swept.to_json()}))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {swept.payloads} stored payloads no run links ({swept.stored_bytes:,} bytes stored), "
               f"stored before {swept.cutoff.isoformat(timespec='seconds')}")


@main.command("worker")
@click.option("-m", "--module", "modules", multiple=True, required=True,
              help="Module defining workflows and activities (repeatable).")
@click.option("-q", "--queue", "queues", multiple=True, help="Queue to serve (repeatable; default 'default').")
@click.option("--workflow-concurrency", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--activity-concurrency", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--identity", default=None, help="Worker name in leases and history.")
@click.option("--lease-seconds", type=click.FloatRange(min=0.5), default=30.0, show_default=True,
              help="Activity lease; another worker takes over this long after this one dies.")
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Fallback poll when no NOTIFY arrives, in seconds.")
@click.option("--heartbeat-interval", type=click.FloatRange(min=0.05, max=3600, max_open=True), default=10.0,
              show_default=True, metavar="SECONDS",
              help="How often the worker writes its row for `cairn workers`; live for three intervals after each.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line on stderr, with workflow_id, run_id, activity and attempt.")
@click.pass_obj
def worker_cmd(settings: Settings, modules: tuple[str, ...], queues: tuple[str, ...],
               workflow_concurrency: int, activity_concurrency: int, identity: str | None,
               lease_seconds: float, poll_interval: float, heartbeat_interval: float, log_format: str) -> None:
    """Run a worker until SIGTERM/SIGINT, then drain gracefully."""
    if log_format == "json":
        use_json()

    async def go() -> None:
        workflows: list[Any] = []
        activities: list[Any] = []
        for mod in import_modules(modules):
            w, a = collect(mod)
            workflows += w
            activities += a
        if not workflows and not activities:
            raise InputValidationError(f"no @workflow.defn or @activity.defn found in {', '.join(modules)}")
        worker = Worker(settings.database_url, workflows=workflows, activities=activities,
                        queues=queues or ("default",), workflow_concurrency=workflow_concurrency,
                        activity_concurrency=activity_concurrency, identity=identity,
                        lease_seconds=lease_seconds, poll_interval=poll_interval,
                        heartbeat_interval=heartbeat_interval, namespace=settings.namespace,
                        module=",".join(modules))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        runner = asyncio.create_task(worker.run())
        await worker_started(worker, runner)
        banner = (f"worker {worker.identity} running {len(worker.workflows)} workflow(s), "
                  f"{len(worker.activities)} activity(ies) on {', '.join(worker.queues)}")
        if log_format == "json":  # every line of stderr is JSON
            banner = JsonFormatter().format(logging.LogRecord("cairn.worker", logging.INFO, "", 0, banner, (), None))
        click.echo(banner, err=True)
        await runner

    run(go(), fast_loop=True)


async def worker_started(worker: Any, runner: asyncio.Task[None]) -> None:
    started = asyncio.create_task(worker.started())
    done, _ = await asyncio.wait({runner, started}, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        started.cancel()
        runner.result()
