"""Operator commands: reset a run to one of its workflow tasks, retry a failed run (one run,
or a batch with --where: :mod:`cairn.cli.batches`)."""

from __future__ import annotations

import functools
import json
from typing import Any

import click

from cairn.cli._base import Settings, main, run, to_json, with_client
from cairn.cli.batches import batch_options, one_or_batch, refuse_batch_flags, run_batch
from cairn.client import Client
from cairn.errors import InputValidationError
from cairn.visibility import check_key

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
run_id_option = click.option("--run-id", default=None, help="A specific run (default: the newest).")


@main.command("reset")
@click.argument("workflow_id", required=False)
@run_id_option
@click.option("--to-seq", type=int, default=None, metavar="N",
              help="Re-run from the workflow task that starts at seq N (a WorkflowTaskStarted event).")
@click.option("--to-last-task", is_flag=True, help="Re-run from the run's last workflow task.")
@click.option("--to-first-task", is_flag=True, help="With --where: re-run each from its first workflow task.")
@click.option("--reason", default="", help="Why (recorded with the new run).")
@click.option("--no-reapply-signals", is_flag=True, help="Do not re-deliver signals received after that task.")
@batch_options
@json_option
@click.pass_obj
def reset_cmd(settings: Settings, workflow_id: str | None, run_id: str | None, to_seq: int | None,
              to_last_task: bool, to_first_task: bool, reason: str, no_reapply_signals: bool, where: str | None,
              dry_run: bool, yes: bool, detach: bool, chunk_size: int, as_json: bool) -> None:
    """Start a new run of WORKFLOW_ID from its history before a workflow task; with --where,
    of every run the filter matches, as a durable batch (see `cairn batch`).

    The current code replays the copied events and carries on from that task; pending
    activities and timers are re-created; an open old run is terminated.
    """
    one_or_batch(workflow_id, where, run_id)
    refuse_batch_flags(where, dry_run, yes, detach)
    if where is not None:
        if (to_seq is not None) + to_last_task + to_first_task != 1:
            raise click.UsageError("give exactly one of --to-seq N, --to-first-task and --to-last-task")
        point: str | int = to_seq if to_seq is not None else "first" if to_first_task else "last"
        run_batch(settings, "reset", where, dry_run=dry_run, yes=yes, detach=detach, chunk_size=chunk_size,
                  as_json=as_json, reason=reason, reset_to=point, reapply_signals=not no_reapply_signals)
        return
    assert workflow_id is not None
    if to_first_task:
        raise click.UsageError("--to-first-task goes with --where (for one run: --to-seq N)")
    if (to_seq is None) == (not to_last_task):
        raise click.UsageError("give exactly one of --to-seq N and --to-last-task")

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        handle = await client.reset(workflow_id, run_id=run_id, to_seq=to_seq, to_last_task=to_last_task,
                                    reason=reason, reapply_signals=not no_reapply_signals)
        d = await handle.describe()
        return {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "reset_from": d.reset_from}

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    else:
        src = out["reset_from"] or {}
        click.echo(f"reset {out['workflow_id']} to seq {src.get('seq')} of run {src.get('run_id')}: "
                   f"new run {out['run_id']}")


@main.command("retry")
@click.argument("workflow_id", required=False)
@run_id_option
@batch_options
@json_option
@click.pass_obj
def retry_cmd(settings: Settings, workflow_id: str | None, run_id: str | None, where: str | None, dry_run: bool,
              yes: bool, detach: bool, chunk_size: int, as_json: bool) -> None:
    """Start a failed (cancelled, terminated, timed-out) run of WORKFLOW_ID again from its
    input; with --where, every such run the filter matches, as a durable batch."""
    one_or_batch(workflow_id, where, run_id)
    refuse_batch_flags(where, dry_run, yes, detach)
    if where is not None:
        run_batch(settings, "retry", where, dry_run=dry_run, yes=yes, detach=detach, chunk_size=chunk_size,
                  as_json=as_json)
        return
    assert workflow_id is not None

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        handle = await client.retry(workflow_id, run_id=run_id)
        d = await handle.describe()
        return {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "reset_from": d.reset_from}

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    else:
        click.echo(f"retried {out['workflow_id']} (run {(out['reset_from'] or {}).get('run_id')}): "
                   f"new run {out['run_id']}")


def parse_search_attributes(items: tuple[str, ...]) -> dict[str, Any] | None:
    """``--search-attribute KEY=JSON`` options as a dict (a bare word that is not JSON is a string).

    Raises:
        InputValidationError: no ``=``, a bad key, or the same key twice.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InputValidationError(f"--search-attribute {item!r}: use KEY=JSON, e.g. amount=12.5")
        check_key(key)
        if key in out:
            raise InputValidationError(f"--search-attribute {key!r} is given twice")
        try:
            out[key] = json.loads(raw, parse_constant=functools.partial(_refuse, key))
        except json.JSONDecodeError:
            out[key] = raw  # customer=acme: a plain string, as a user would expect
    return out or None


def _refuse(key: str, constant: str) -> Any:
    raise InputValidationError(f"--search-attribute {key!r}: {constant} is not a storable value")
