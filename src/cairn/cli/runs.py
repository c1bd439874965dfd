"""Commands on runs: start, list, describe, history, replay, cancel, terminate (one run, or a
batch with --where: :mod:`cairn.cli.batches`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from cairn.cli._base import (
    EXIT_RUNTIME,
    Settings,
    import_modules,
    main,
    parse_json,
    run,
    table,
    to_json,
    when,
    with_client,
)
from cairn.cli.batches import batch_options, one_or_batch, refuse_batch_flags, run_batch
from cairn.cli.llm_runs import follow_history
from cairn.cli.operators import parse_search_attributes
from cairn.client import Client, RunPage
from cairn.client.workers import unserved
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.errors import (
    CairnError,
    InputValidationError,
    NonDeterminismError,
    UnknownWorkflowType,
    WorkflowFailure,
    WorkflowTaskFailed,
)
from cairn.options import ID_REUSE_POLICIES, RUN_STATUSES, Priority, seconds
from cairn.store import archive as archives
from cairn.views import summarize
from cairn.worker import collect
from cairn.workflow import WorkflowDefinition, WorkflowInfo

# A history file holds up to the history length limit of payloads; this only stops a
# runaway read (a device, a wrong file), it is not a history limit.
MAX_HISTORY_FILE_BYTES = 1 << 30
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
run_id_option = click.option("--run-id", default=None, help="A specific run (default: the newest).")
F = TypeVar("F", bound=Callable[..., Any])
UNSERVED_CHECK_SECONDS = 5.0  # how often `start --wait` looks for work of its run that no live worker serves


def _find_workflow(modules: tuple[str, ...], name: str) -> WorkflowDefinition:
    known = []
    for mod in import_modules(modules):
        for fn in collect(mod)[0]:
            d: WorkflowDefinition = fn.__cairn_workflow__
            if d.name == name:
                return d
            known.append(d.name)
    raise UnknownWorkflowType(f"no workflow type {name!r} in {', '.join(modules)}"
                              f"{' (found: ' + ', '.join(known) + ')' if known else ''}")


def _args_for(value: Any, max_args: int, given: bool) -> list[Any]:
    """Maps ``--input`` to the workflow's argument list."""
    if max_args == 0:
        if given and value is not None:
            raise InputValidationError("this workflow takes no input, but --input was given")
        return []
    if max_args == 1:
        if not given:
            raise InputValidationError("this workflow takes one argument: pass it with --input JSON")
        return [value]
    if not isinstance(value, list):
        raise InputValidationError(f"this workflow takes up to {max_args} arguments: pass --input as a JSON array")
    return value


def place_options(fn: F) -> F:
    """A start's ``--priority``, ``--fairness-key``, ``--fairness-weight`` and ``--concurrency-key``
    (``cairn start``, ``cairn schedule create``); :func:`place` makes the ``Priority``."""
    for option in reversed([
        click.option("--priority", type=int, default=None, metavar="1-5",
                     help="Its place in the queue: 1 first to 5 last (default 3); its activities and children "
                          "inherit it."),
        click.option("--fairness-key", default=None, metavar="KEY",
                     help="Share the queue's priority level fairly among keys (a tenant, a customer)."),
        click.option("--fairness-weight", type=float, default=None, metavar="W",
                     help="The key's share relative to other keys (default 1.0)."),
        click.option("--concurrency-key", default=None, metavar="KEY",
                     help="Start only while fewer than the key's limit of its runs are open (cairn limits set)."),
    ]):
        fn = option(fn)
    return fn


def place(priority: int | None, fairness_key: str | None, fairness_weight: float | None) -> Priority:
    """The ``Priority`` of :func:`place_options`' values, checked before anything is written."""
    return Priority(priority, fairness_key, fairness_weight)


@main.command("start")
@click.argument("workflow_type")
@click.option("--input", "input_", default=None, metavar="JSON|@FILE", help="The workflow's input as JSON.")
@click.option("--id", "workflow_id", default=None, help="Workflow id (default: a new UUID).")
@click.option("--queue", default=None,
              help="The workflow queue (default: the one queue whose workers registered the type, else 'default').")
@click.option("--id-conflict", type=click.Choice(["fail", "use_existing", "terminate_existing"]), default="fail",
              show_default=True, help="With an open run of the id: fail, return it, or terminate it and start anew.")
@click.option("--id-reuse-policy", type=click.Choice(list(ID_REUSE_POLICIES)), default="allow_duplicate",
              show_default=True, help="Whether the id may be reused after its runs closed.")
@click.option("--execution-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Time out the run (and the runs it continues as) after this many seconds.")
@click.option("--start-delay", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="The run exists at once; its first workflow task waits this many seconds.")
@click.option("-m", "--module", "modules", multiple=True,
              help="Validate against this module's code instead of the worker registry.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", type=float, default=None,  # checked by common.seconds, as the API's timeouts
              help="With --wait: give up after this many seconds.")
@click.option("--search-attribute", "search_attributes", multiple=True, metavar="KEY=JSON",
              help="A search attribute (repeatable): amount=12.5, vip=true, 'tags=[\"a\"]'; a value that is "
                   "not JSON is a string (customer=acme).")
@click.option("--memo", default=None, metavar="JSON|@FILE", help="A JSON object shown by describe.")
@place_options
@json_option
@click.pass_obj
def start_cmd(settings: Settings, workflow_type: str, input_: str | None, workflow_id: str | None,
              queue: str | None, id_conflict: str, id_reuse_policy: str, execution_timeout: float | None,
              start_delay: float | None, modules: tuple[str, ...], wait: bool, timeout: float | None,
              search_attributes: tuple[str, ...], memo: str | None, priority: int | None,
              fairness_key: str | None, fairness_weight: float | None, concurrency_key: str | None,
              as_json: bool) -> None:
    """Start a workflow of type WORKFLOW_TYPE.

    A type no worker has registered yet on the queue is accepted with a warning: the run
    waits for a worker (its input is validated with -m, else when no schema is known it
    is taken as is: --input is the one argument). So is a type no live worker serves; with
    --wait, work of the run that no live worker serves (an activity type, or the workflow
    type once its workers are gone) is reported on stderr while waiting.
    """

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        seconds(timeout)  # NaN or infinity: refused before the start is written
        start_place = place(priority, fairness_key, fairness_weight)
        value = parse_json(input_, "--input")
        visibility = {"search_attributes": parse_search_attributes(search_attributes),
                      "memo": parse_json(memo, "--memo")}
        target: Any
        where = await client.start_target(workflow_type, queue)
        if modules:
            d = _find_workflow(modules, workflow_type)
            args = _args_for(value, len(d.signature.adapters), input_ is not None)
            target = d.fn
        else:
            schema = where.input_schema
            if schema is not None:
                args = _args_for(value, int(schema.get("maxItems", 1)), input_ is not None)
            else:  # nothing known of its arguments yet: --input, if given, is the one argument
                args = [value] if input_ is not None else []
            target = workflow_type
        said: set[tuple[str, str, str]] = set()
        if where.warning is not None:
            click.echo(f"warning: {where.warning}", err=True)
            logging.getLogger("cairn.client").setLevel(logging.ERROR)  # said once, here
            said.add(("workflow", workflow_type, where.queue))
        handle = await client.start(target, *args, id=workflow_id, queue=where.queue,
                                    id_conflict=id_conflict,  # type: ignore[arg-type]
                                    id_reuse_policy=id_reuse_policy,  # type: ignore[arg-type]
                                    execution_timeout=execution_timeout, start_delay=start_delay,
                                    priority=start_place, concurrency_key=concurrency_key, **visibility)
        out: dict[str, Any] = {"workflow_id": handle.workflow_id, "run_id": handle.run_id}
        if not as_json:
            on = f" on queue {where.queue}, the one queue it is registered on" \
                if where.inferred and where.warning is None else ""
            click.echo(f"started {workflow_type} as {handle.workflow_id} (run {handle.run_id}){on}", err=wait)
        # Once started (bad input says only what is wrong): whether a live worker serves it.
        with contextlib.suppress(CairnError):  # the start is done: a failed look is not its failure
            said = _warn_unserved(await unserved(client, run_id=str(handle.run_id)), said)
        if wait:
            from cairn.cli.render import with_progress  # start-up time: rich loads only for --wait and describe

            watcher = asyncio.create_task(_watch_unserved(client, str(handle.run_id), said))
            try:
                out["result"] = await with_progress(client, handle.workflow_id, handle.result(timeout=timeout))
                out["status"] = "completed"
            except WorkflowFailure as exc:
                # The exception's text already says "workflow 'X' failed: Type: message";
                # the JSON carries the recorded failure's own message, without that prefix.
                recorded = exc.details if isinstance(exc.details, dict) else {}
                out["status"] = "failed"
                out["failure"] = {"type": exc.type, "message": recorded.get("message", exc.message)}
                out["error"] = str(exc)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        return out

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    elif wait and out["status"] == "completed":
        click.echo(json.dumps(out["result"], default=str))
    if wait and out["status"] != "completed":
        if not as_json:
            click.echo(f"error: {out['error']}", err=True)
        raise click.exceptions.Exit(EXIT_RUNTIME)


def _warn_unserved(entries: list[dict[str, Any]], said: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """Warns on stderr of each unserved entry not said already; returns the entries now
    unserved (one served again and lost again is said again)."""
    now: set[tuple[str, str, str]] = set()
    for u in entries:
        key = (u["kind"], u["type"], u["queue"])
        now.add(key)
        if key not in said:
            click.echo(f"warning: {u['message']}; the run waits for one", err=True)
    return now


async def _watch_unserved(client: Client, run_id: str, said: set[tuple[str, str, str]]) -> None:
    """``start --wait``: every UNSERVED_CHECK_SECONDS, warns of the run's work that no live
    worker serves and was not said already (best effort: a failed look is skipped)."""
    while True:
        await asyncio.sleep(UNSERVED_CHECK_SECONDS)
        with contextlib.suppress(CairnError):
            said = _warn_unserved(await unserved(client, run_id=run_id), said)


@main.command("list")
@click.option("--status", type=click.Choice(list(RUN_STATUSES)))
@click.option("--type", "workflow_type", default=None, help="Only runs of this workflow type.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Runs per page.")
@click.option("--where", default=None, metavar="FILTER",
              help="""A filter such as 'customer = "acme" AND amount > 10' (see the README).""")
@click.option("--page-token", default=None, metavar="TOKEN",
              help="The next page: the token the previous page ended with (same filters).")
@json_option
@click.pass_obj
def list_cmd(settings: Settings, status: str | None, workflow_type: str | None, limit: int, where: str | None,
             page_token: str | None, as_json: bool) -> None:
    """List runs, newest first, a page at a time."""

    @with_client
    async def go(client: Client) -> RunPage:
        return await client.list_page(status=status, workflow_type=workflow_type, limit=limit, where=where,
                                      page_token=page_token)

    page = run(go(settings))
    if as_json:
        click.echo(to_json(page.to_json()))
        return
    rows = page.runs
    if not rows:
        click.echo("no runs")
        return
    click.echo(table([[r["workflow_id"], r["workflow_type"], r["status"], when(r["created_at"]),
                       when(r["closed_at"]), r["run_id"]] for r in rows],
                     ["WORKFLOW ID", "TYPE", "STATUS", "STARTED", "CLOSED", "RUN ID"]))
    if page.next_page_token or page.skipped:
        first, last = page.skipped + 1, page.skipped + len(rows)
        shown = str(len(rows)) if not page.skipped else f"{first}-{last}" if last > first else str(first)
        more = f" (next page: --page-token {page.next_page_token})" if page.next_page_token else ""
        click.echo(f"{shown} of {page.total} runs{more}")


@main.command("describe")
@click.argument("workflow_id")
@run_id_option
@json_option
@click.pass_obj
def describe_cmd(settings: Settings, workflow_id: str, run_id: str | None, as_json: bool) -> None:
    """Show a run's status, pending activities, timers, task failures and sagas."""

    @with_client
    async def go(client: Client) -> Any:
        return await client.get_handle(workflow_id, run_id).describe()

    d = run(go(settings))
    if as_json:
        click.echo(to_json(d.to_json()))
        return
    from cairn.cli.render import echo_describe  # start-up time: rich loads only for --wait and describe

    echo_describe(d)


@main.command("history")
@click.argument("workflow_id")
@run_id_option
@json_option
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new events and streamed LLM tokens until the run closes.")
@click.pass_obj
def history_cmd(settings: Settings, workflow_id: str, run_id: str | None, as_json: bool, follow: bool) -> None:
    """Show a run's event history (--json gives a file that `cairn replay` accepts)."""
    if follow:
        follow_history(settings, workflow_id, run_id, as_json)
        return

    @with_client
    async def go(client: Client) -> tuple[Any, list[Event]]:
        d = await client.get_handle(workflow_id, run_id).describe()
        # Pinned to the run described: the newest run may change in between (continue-as-new).
        return d, await client.get_handle(workflow_id, d.run_id).history()

    d, events = run(go(settings))
    if as_json:
        click.echo(to_json({"workflow_id": d.workflow_id, "run_id": d.run_id, "workflow_type": d.workflow_type,
                            "queue": d.queue, "status": d.status, "events": [e.to_json() for e in events]}))
        return
    click.echo(table([[str(e.seq), e.at.astimezone().strftime("%H:%M:%S.%f")[:-3] if e.at else "", e.type,
                       summarize(e)[:100]] for e in events], ["SEQ", "TIME", "EVENT", "DETAILS"]))


@main.command("replay")
@click.argument("source", metavar="ID|FILE")
@click.option("-m", "--module", "modules", multiple=True, required=True, help="Module with the current code.")
@run_id_option
@json_option
@click.pass_obj
def replay_cmd(settings: Settings, source: str, modules: tuple[str, ...], run_id: str | None, as_json: bool) -> None:
    """Replay a history (a workflow id, a file from `cairn history --json`, or an archive file: each of its runs,
    or --run-id's) against the current code."""

    is_file = os.path.isfile(source)

    async def load() -> list[dict[str, Any]]:
        if is_file and archives.is_json_lines(source):
            found = [r.document for r in archives.read_runs(source, run_id=run_id)]
            if not found:
                raise InputValidationError(f"{source} holds no run" + (f" {run_id}" if run_id else ""))
            return found
        if is_file:
            data = parse_json("@" + source, "history file", max_bytes=MAX_HISTORY_FILE_BYTES)
            if not isinstance(data, dict) or not isinstance(data.get("events"), list):
                raise InputValidationError(
                    f"{source} is not a history file (want the output of `cairn history --json`)")
            return [data]

        @with_client
        async def fetch(client: Client) -> dict[str, Any]:
            d = await client.get_handle(source, run_id).describe()
            events = await client.get_handle(source, d.run_id).history()  # the run described
            return {"workflow_id": d.workflow_id, "run_id": d.run_id, "workflow_type": d.workflow_type,
                    "queue": d.queue, "events": [e.to_json() for e in events]}

        return [await fetch(settings)]

    async def go() -> list[dict[str, Any]]:
        return [_replay_one(settings, modules, data) for data in await load()]

    outs = run(go())
    if len(outs) > 1:
        failed = [o for o in outs if not o["ok"]]
        if as_json:
            click.echo(to_json({"ok": not failed, "runs": len(outs), "failed": len(failed), "results": outs}))
        else:
            for o in failed:
                click.echo(f"{o['workflow_id']} {o['run_id']}: " + (
                    f"DIVERGED: {o['divergence']['message']}" if "divergence" in o else f"FAILED: {o['error']}"))
            click.echo(f"{'FAILED' if failed else 'OK'}: {len(outs) - len(failed)} of {len(outs)} runs "
                       "replay with the current code")
        if failed:
            raise click.exceptions.Exit(EXIT_RUNTIME)
        return
    out = outs[0]
    if as_json:
        click.echo(to_json(out))
    elif out["ok"]:
        click.echo(f"OK: {out['events']} events of {out['workflow_id']} replay with the current code")
    elif "divergence" in out:
        click.echo(f"DIVERGED: {out['divergence']['message']}")
    else:
        click.echo(f"FAILED: replay raised {out['error']}")
    if not out["ok"]:
        raise click.exceptions.Exit(EXIT_RUNTIME)


def _replay_one(settings: Settings, modules: tuple[str, ...], data: dict[str, Any]) -> dict[str, Any]:
    """Replays one history document; what happened, as `cairn replay --json` prints it."""
    try:
        events = [Event.from_json(e) for e in data["events"]]
        if not events:
            raise ValueError("it has no events")
        name = str(data.get("workflow_type") or events[0].data["workflow_type"])
        try:
            run = str(uuid.UUID(str(data.get("run_id"))))
        except ValueError:
            raise ValueError(f"run_id {data.get('run_id')!r} is not a UUID") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise InputValidationError(f"malformed history: {exc}") from None
    definition = _find_workflow(modules, name)
    start = events[0].at
    info = WorkflowInfo(workflow_id=str(data.get("workflow_id")), run_id=run,
                        workflow_type=name, queue=str(data.get("queue") or "default"), namespace=settings.namespace,
                        start_time=start if start else _epoch())
    out: dict[str, Any] = {"workflow_id": info.workflow_id, "run_id": info.run_id, "events": len(events)}
    try:
        replay(definition, info, events)
        out["ok"] = True
    except WorkflowTaskFailed as exc:
        cause = exc.cause
        out["ok"] = False
        if isinstance(cause, NonDeterminismError):
            out["divergence"] = {"seq": cause.seq, "expected": cause.expected, "produced": cause.produced,
                                 "message": str(cause)}
        else:
            out["error"] = f"{type(cause).__name__}: {cause}"
    except NonDeterminismError as exc:
        out["ok"] = False
        out["divergence"] = {"seq": exc.seq, "expected": exc.expected, "produced": exc.produced,
                             "message": str(exc)}
    return out


def _epoch() -> Any:
    return datetime.fromtimestamp(0, UTC)


@main.command("cancel")
@click.argument("workflow_id", required=False)
@run_id_option
@click.option("--reason", default="", help="Why (recorded in history).")
@batch_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def cancel_cmd(settings: Settings, workflow_id: str | None, run_id: str | None, reason: str, where: str | None,
               dry_run: bool, yes: bool, detach: bool, chunk_size: int, as_json: bool) -> None:
    """Ask a run to cancel (its code sees CancelledError and may clean up); with --where,
    every open run the filter matches, as a durable batch (see `cairn batch`)."""
    one_or_batch(workflow_id, where, run_id)
    refuse_batch_flags(where, dry_run, yes, detach)
    if where is not None:
        run_batch(settings, "cancel", where, dry_run=dry_run, yes=yes, detach=detach, chunk_size=chunk_size,
                  as_json=as_json, reason=reason)
        return
    assert workflow_id is not None

    @with_client
    async def go(client: Client) -> None:
        await client.get_handle(workflow_id, run_id).cancel(reason)

    run(go(settings))
    click.echo(to_json({"workflow_id": workflow_id, "cancel_requested": True}) if as_json
               else f"cancel requested for {workflow_id}")


@main.command("terminate")
@click.argument("workflow_id", required=False)
@run_id_option
@click.option("--reason", default="", help="Why (recorded in history).")
@batch_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def terminate_cmd(settings: Settings, workflow_id: str | None, run_id: str | None, reason: str, where: str | None,
                  dry_run: bool, yes: bool, detach: bool, chunk_size: int, as_json: bool) -> None:
    """End a run at once, running no more workflow code; with --where, every open run the
    filter matches, as a durable batch (see `cairn batch`)."""
    one_or_batch(workflow_id, where, run_id)
    refuse_batch_flags(where, dry_run, yes, detach)
    if where is not None:
        run_batch(settings, "terminate", where, dry_run=dry_run, yes=yes, detach=detach, chunk_size=chunk_size,
                  as_json=as_json, reason=reason)
        return
    assert workflow_id is not None

    @with_client
    async def go(client: Client) -> None:
        await client.get_handle(workflow_id, run_id).terminate(reason)

    run(go(settings))
    click.echo(to_json({"workflow_id": workflow_id, "terminated": True}) if as_json else f"terminated {workflow_id}")


__all__ = ["CairnError"]
