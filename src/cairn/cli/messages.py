"""Commands that message a run: signal, query."""

from __future__ import annotations

import json
from typing import Any

import click

from cairn.cli._base import Settings, main, parse_json, run, to_json, with_client
from cairn.client import Client
from cairn.client.messages import QUERY_TIMEOUT_SECONDS
from cairn.errors import InputValidationError, QueryFailed

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
run_id_option = click.option("--run-id", default=None, help="A specific run (default: the newest).")


@main.command("signal")
@click.argument("workflow_id")
@click.argument("name")
@click.option("--input", "input_", default=None, metavar="JSON|@FILE", help="The signal's payload as JSON.")
@run_id_option
@json_option
@click.pass_obj
def signal_cmd(settings: Settings, workflow_id: str, name: str, input_: str | None, run_id: str | None,
               as_json: bool) -> None:
    """Send signal NAME (with --input as its payload) to the open run of WORKFLOW_ID.

    Exits 2 for bad JSON, an unknown workflow or a closed one.
    """

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        payload = parse_json(input_, "--input")
        handle = client.get_handle(workflow_id, run_id)
        await handle.signal(name, payload)
        return {"workflow_id": workflow_id, "run_id": handle.run_id, "signal": name}

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    else:
        click.echo(f"signalled {name} to {workflow_id} (run {out['run_id']})")


@main.command("query")
@click.argument("workflow_id")
@click.argument("name")
@click.option("--input", "input_", default=None, metavar="JSON|@FILE",
              help="The query's argument as JSON (the handler gets it as its one argument).")
@run_id_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=QUERY_TIMEOUT_SECONDS,
              show_default=True, help="Seconds to wait for a worker's answer.")
@json_option
@click.pass_obj
def query_cmd(settings: Settings, workflow_id: str, name: str, input_: str | None, run_id: str | None,
              timeout: float, as_json: bool) -> None:
    """Ask query NAME of WORKFLOW_ID's run; a worker serving its queue answers.

    Exits 2 for bad JSON, an unknown workflow or an unknown query name; 1 when the
    handler failed or no worker answered in time.
    """

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        args = [] if input_ is None else [parse_json(input_, "--input")]
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
