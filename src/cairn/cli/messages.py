"""Commands that message a run: signal, query, update."""

from __future__ import annotations

import json
from typing import Any

import click

from cairn.cli._base import Settings, main, parse_json, run, to_json, with_client
from cairn.cli.batches import batch_options, refuse_batch_flags, run_batch
from cairn.client import Client
from cairn.client.messages import QUERY_TIMEOUT_SECONDS
from cairn.errors import CairnError, InputValidationError, QueryFailed, WorkflowUpdateFailedError

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
run_id_option = click.option("--run-id", default=None, help="A specific run (default: the newest).")


@main.command("signal")
@click.argument("workflow_id", required=False, metavar="[WORKFLOW_ID]")
@click.argument("name", required=False, metavar="NAME")
@click.option("--input", "inputs", multiple=True, metavar="JSON|@FILE",
              help="The signal's payload as JSON (repeat for a handler of several arguments).")
@run_id_option
@batch_options
@json_option
@click.pass_obj
def signal_cmd(settings: Settings, workflow_id: str | None, name: str | None, inputs: tuple[str, ...],
               run_id: str | None, where: str | None, dry_run: bool, yes: bool, detach: bool, chunk_size: int,
               as_json: bool) -> None:
    """Send signal NAME (with --input as its payload) to the open run of WORKFLOW_ID; with
    --where FILTER (and no WORKFLOW_ID), to every open run the filter matches, once each,
    as a durable batch (see `cairn batch`).

    Exits 2 for bad JSON, an unknown workflow or a closed one.
    """
    if where is not None:
        if name is not None:
            raise click.UsageError("with --where, give only the signal NAME (no WORKFLOW_ID)")
        if workflow_id is None:
            raise click.UsageError("missing the signal NAME")
        if run_id is not None:
            raise click.UsageError("--run-id names one run: it does not go with --where")
        refuse_batch_flags(where, dry_run, yes, detach)
        args = run(_parsed(inputs))
        run_batch(settings, "signal", where, dry_run=dry_run, yes=yes, detach=detach, chunk_size=chunk_size,
                  as_json=as_json, signal=workflow_id, signal_args=args)
        return
    refuse_batch_flags(where, dry_run, yes, detach)
    if workflow_id is None or name is None:
        raise click.UsageError("give WORKFLOW_ID and NAME (or --where FILTER and NAME)")

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        args = [parse_json(i, "--input") for i in inputs]
        handle = client.get_handle(workflow_id, run_id)
        await handle.signal(name, *args)
        return {"workflow_id": workflow_id, "run_id": handle.run_id, "signal": name}

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    else:
        click.echo(f"signalled {name} to {workflow_id} (run {out['run_id']})")


async def _parsed(inputs: tuple[str, ...]) -> list[Any]:
    return [parse_json(i, "--input") for i in inputs]


@main.command("query")
@click.argument("workflow_id")
@click.argument("name")
@click.option("--input", "inputs", multiple=True, metavar="JSON|@FILE",
              help="An argument of the query handler as JSON (repeat for several).")
@run_id_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=QUERY_TIMEOUT_SECONDS,
              show_default=True, help="Seconds to wait for a worker's answer.")
@json_option
@click.pass_obj
def query_cmd(settings: Settings, workflow_id: str, name: str, inputs: tuple[str, ...], run_id: str | None,
              timeout: float, as_json: bool) -> None:
    """Ask query NAME of WORKFLOW_ID's run; a worker serving its queue answers.

    Exits 2 for bad JSON, an unknown workflow or an unknown query name; 1 when the
    handler failed or no worker answered in time.
    """

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        args = [parse_json(i, "--input") for i in inputs]
        handle = client.get_handle(workflow_id, run_id)
        try:
            answer = await handle.query(name, *args, timeout=timeout)
        except QueryFailed as exc:
            if exc.type == "UnknownQuery":
                raise InputValidationError(str(exc)) from None
            raise
        return {"workflow_id": workflow_id, "run_id": handle.run_id, "query": name, "answer": answer}

    out = run(go(settings))
    click.echo(to_json(out) if as_json else json.dumps(out["answer"], default=str))


@main.command("update")
@click.argument("workflow_id")
@click.argument("name")
@click.option("--input", "inputs", multiple=True, metavar="JSON|@FILE",
              help="An argument of the update handler as JSON (repeat for several).")
@click.option("--id", "update_id", default=None,
              help="The update id (default: a new UUID); asking again with it is not applied twice.")
@run_id_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds to wait for the outcome (default: as long as it takes).")
@json_option
@click.pass_obj
def update_cmd(settings: Settings, workflow_id: str, name: str, inputs: tuple[str, ...], update_id: str | None,
               run_id: str | None, timeout: float | None, as_json: bool) -> None:
    """Send update NAME to the open run of WORKFLOW_ID and print its handler's result.

    The run's validator may reject it (nothing is recorded). Exits 2 for bad JSON, an
    unknown or closed workflow, or a rejected update; 1 when the handler failed, the run
    closed before it finished, or the timeout passed.
    """

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        args = [parse_json(i, "--input") for i in inputs]
        handle = client.get_handle(workflow_id, run_id)
        update = await handle.start_update(name, *args, id=update_id, timeout=timeout)
        try:
            result = await update.result(timeout)
        except WorkflowUpdateFailedError as exc:
            raise CairnError(str(exc)) from None
        return {"workflow_id": workflow_id, "run_id": update.run_id, "update": name, "update_id": update.id,
                "result": result}

    async def rejected_as_bad_input(settings: Settings) -> dict[str, Any]:
        try:
            return await go(settings)
        except WorkflowUpdateFailedError as exc:  # only a rejection gets here
            raise InputValidationError(str(exc)) from None

    out = run(rejected_as_bad_input(settings))
    click.echo(to_json(out) if as_json else json.dumps(out["result"], default=str))
