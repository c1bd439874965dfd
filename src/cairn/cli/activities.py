"""Commands that complete an activity from outside, by its task token (asynchronous
activity completion): ``cairn activity complete|fail|heartbeat TOKEN``."""

from __future__ import annotations

from typing import Any

import click

from cairn.activity import parse_task_token
from cairn.cli._base import Settings, main, parse_json, run, to_json, with_client
from cairn.client import Client
from cairn.errors import ApplicationError, AsyncActivityCancelled

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
token_argument = click.argument("token")


@main.group("activity")
def activity_group() -> None:
    """Complete, fail or heartbeat an activity by its task token (an activity that called
    activity.raise_complete_async()), exiting 2 for a malformed or stale token; pause,
    unpause or fail one by its workflow id and seq."""


def _named(token: str) -> dict[str, Any]:
    t = parse_task_token(token)
    return {"run_id": t.run_id, "activity_seq": t.seq}


@activity_group.command("complete")
@token_argument
@click.option("--input", "input_", default=None, metavar="JSON|@FILE", help="The activity's result as JSON.")
@json_option
@click.pass_obj
def complete_cmd(settings: Settings, token: str, input_: str | None, as_json: bool) -> None:
    """Complete the activity of TOKEN with --input as its result."""

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        named = _named(token)
        result = parse_json(input_, "--input")
        await client.complete_activity(token, result)
        return {**named, "outcome": "completed"}

    out = run(go(settings))
    click.echo(to_json(out) if as_json else f"completed activity {out['activity_seq']} of run {out['run_id']}")


@activity_group.command("fail")
@click.argument("token", metavar="TOKEN|WORKFLOW_ID")
@click.option("--seq", type=int, default=None,
              help="Fail pending activity SEQ of WORKFLOW_ID's open run for good (a paused one, typically).")
@click.option("--run-id", default=None, help="With --seq: a specific run (default: the newest).")
@click.option("--message", default=None, help="The error message.")
@click.option("--type", "type_", default=None, help="The error type (ApplicationError; with --seq, "
                                                       "ActivityFailedByOperator).")
@click.option("--details", default=None, metavar="JSON|@FILE", help="The error's details as JSON.")
@click.option("--non-retryable", is_flag=True, help="Fail the activity for good, without a retry.")
@json_option
@click.pass_obj
def fail_cmd(settings: Settings, token: str, seq: int | None, run_id: str | None, message: str | None,
             type_: str | None, details: str | None, non_retryable: bool, as_json: bool) -> None:
    """Fail the attempt of TOKEN: the activity's retry policy decides whether it runs again.
    With --seq N, fail pending activity N of the open run of WORKFLOW_ID for good (its
    workflow gets an ActivityError; an attempt still running is superseded)."""
    if seq is not None:
        _fail_by_seq(settings, token, seq, run_id, message or "failed by an operator",
                     type_ or "ActivityFailedByOperator", details, as_json)
        return
    if run_id is not None:
        raise click.UsageError("--run-id goes with --seq")
    message = message or "failed by an outside system"
    type_ = type_ or "ApplicationError"

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        named = _named(token)
        error = ApplicationError(message, type=type_, details=parse_json(details, "--details"),
                                 non_retryable=non_retryable)
        return {**named, "outcome": await client.fail_activity(token, error)}

    out = run(go(settings))
    click.echo(to_json(out) if as_json
               else f"failed activity {out['activity_seq']} of run {out['run_id']}: {out['outcome']}")


def _fail_by_seq(settings: Settings, workflow_id: str, seq: int, run_id: str | None, message: str, type_: str,
                 details: str | None, as_json: bool) -> None:
    @with_client
    async def go(client: Client) -> dict[str, Any]:
        handle = client.get_handle(workflow_id, run_id)
        await handle.fail_activity(seq, message, type=type_, details=parse_json(details, "--details"))
        return {"workflow_id": workflow_id, "run_id": handle.run_id, "activity_seq": seq, "outcome": "failed"}

    out = run(go(settings))
    click.echo(to_json(out) if as_json else f"failed activity {seq} of {workflow_id} for good")


@activity_group.command("heartbeat")
@token_argument
@click.option("--input", "input_", default=None, metavar="JSON|@FILE", help="The heartbeat's details as JSON.")
@json_option
@click.pass_obj
def heartbeat_cmd(settings: Settings, token: str, input_: str | None, as_json: bool) -> None:
    """Heartbeat the attempt of TOKEN (with --input as its details); says whether the
    workflow asked the activity to stop."""

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        named = _named(token)
        try:
            await client.heartbeat_activity(token, parse_json(input_, "--input"))
        except AsyncActivityCancelled:
            return {**named, "cancel_requested": True}
        return {**named, "cancel_requested": False}

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    else:
        stop = " (the workflow asked it to stop)" if out["cancel_requested"] else ""
        click.echo(f"heartbeat recorded for activity {out['activity_seq']} of run {out['run_id']}{stop}")
