"""Batch operations: ``cairn terminate|cancel|signal|reset|retry --where ...`` (the commands
live with their single-run forms; this module runs the batch form) and ``cairn batch
list|describe|cancel|wait``.

A batch command checks everything first (exit 2, nothing written), shows what it would act
on (``--dry-run`` stops there), asks on a terminal (``--yes`` does not; elsewhere ``--yes``
is required), starts the batch, then follows it here with its progress on stderr, executing
it unless a worker already is, and prints a summary. Interrupted, the batch goes on: any
worker resumes it, and ``cairn batch wait ID`` follows (or resumes) it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from cairn.cli._base import EXIT_BAD_INPUT, EXIT_RUNTIME, Settings, fail, main, run, table, to_json, when, with_client
from cairn.cli.render import ProgressLine
from cairn.client import BatchDescription, BatchPreview, Client
from cairn.client.batches import Counts
from cairn.store.batches import CHUNK_SIZE

F = TypeVar("F", bound=Callable[..., Any])



def batch_options(fn: F) -> F:
    """The options every batch form takes (with ``--json`` added by the command)."""
    for option in reversed([
        click.option("--where", default=None, metavar="FILTER",
                     help="Act on every run this filter matches (as `cairn list --where`), as a durable batch."),
        click.option("--dry-run", is_flag=True,
                     help="With --where: print how many runs match, and some; write nothing."),
        click.option("--yes", "-y", is_flag=True, help="With --where: do not ask for confirmation."),
        click.option("--detach", is_flag=True,
                     help="With --where: start the batch and return its id; workers execute it."),
        click.option("--chunk-size", type=click.IntRange(1, 10_000), default=CHUNK_SIZE, show_default=True,
                     help="With --where: runs acted on per transaction."),
    ]):
        fn = option(fn)
    return fn


def one_or_batch(workflow_id: str | None, where: str | None, run_id: str | None) -> None:
    """A command of one run or of a batch: exactly one of WORKFLOW_ID and --where."""
    if (workflow_id is None) == (where is None):
        raise click.UsageError("give a WORKFLOW_ID, or --where FILTER for every run it matches")
    if where is not None and run_id is not None:
        raise click.UsageError("--run-id names one run: it does not go with --where")


def refuse_batch_flags(where: str | None, dry_run: bool, yes: bool, detach: bool) -> None:
    """The batch-only flags without --where are a usage error."""
    if where is None and (dry_run or yes or detach):
        raise click.UsageError("--dry-run, --yes and --detach go with --where")


def run_batch(settings: Settings, kind: str, where: str, *, dry_run: bool, yes: bool, detach: bool,
              chunk_size: int, as_json: bool, **arguments: Any) -> None:
    """The batch form of a command (see the module docstring)."""

    @with_client
    async def look(client: Client) -> BatchPreview:
        return await client.preview_batch(kind, where=where, **arguments)

    preview = run(look(settings))
    if dry_run:
        click.echo(to_json(preview.to_json()) if as_json else _preview_text(preview))
        return
    if preview.matched == 0:
        click.echo(to_json({**preview.to_json(), "dry_run": False}) if as_json
                   else "no runs match: nothing to do")
        return
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise fail(f"{kind} of {preview.matched} runs: add --yes to confirm (or --dry-run to look first)",
                       EXIT_BAD_INPUT)
        click.echo(_preview_text(preview), err=True)
        click.confirm(f"{kind.capitalize()} the {preview.matched} matching runs?", abort=True, err=True)

    progress = _Progress(kind, quiet=as_json)

    @with_client
    async def go(client: Client) -> BatchDescription | str:
        handle = await client.start_batch(kind, where=where, **arguments)
        if detach:
            return handle.id
        click.echo(f"batch {handle.id}: {kind} of the runs matching {where!r} (if interrupted, it goes on: "
                   f"`cairn batch wait {handle.id}`, `cairn batch cancel {handle.id}`)", err=True)
        return await handle.wait(on_progress=progress, chunk_size=chunk_size)

    out = run(go(settings))
    progress.end()
    if isinstance(out, str):
        click.echo(to_json({"batch_id": out, "status": "running"}) if as_json else out)
        return
    show_result(out, as_json)


def show_result(d: BatchDescription, as_json: bool) -> None:
    """Prints a finished batch; exits 1 unless it completed with no failed run."""
    click.echo(to_json(d.to_json()) if as_json else _summary_text(d))
    if d.status != "completed" or d.failed:
        raise click.exceptions.Exit(EXIT_RUNTIME)


class _Progress(ProgressLine):
    """A batch's progress (see ProgressLine)."""

    def __init__(self, kind: str, *, quiet: bool) -> None:
        super().__init__(quiet=quiet)
        self.kind = kind

    def __call__(self, c: Counts) -> None:
        pct = 100 * c.processed // c.matched if c.matched else 100
        self.show(f"{self.kind}: {c.processed}/{c.matched} ({pct}%): done {c.done}, skipped {c.skipped}, "
                  f"failed {c.failed}", final=c.processed >= c.matched)


def _preview_text(p: BatchPreview) -> str:
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(p.by_status.items())) or "none"
    lines = [f"{p.kind} would act on {p.matched} runs matching {p.filter!r} ({statuses})"]
    if p.kind in ("cancel", "terminate", "signal") and p.matched > p.open:
        lines.append(f"  {p.matched - p.open} of them are closed and would be skipped")
    if p.kind == "retry":
        retryable = sum(n for s, n in p.by_status.items() if s in ("failed", "cancelled", "terminated", "timed_out"))
        lines.append(f"  {retryable} of them are failed, cancelled, terminated or timed out; the rest would be skipped")
    if p.sample:
        lines.append(table([[r["workflow_id"], r["run_id"], r["status"]] for r in p.sample],
                           ["WORKFLOW ID", "RUN ID", "STATUS"]))
        if p.matched > len(p.sample):
            lines.append(f"... and {p.matched - len(p.sample)} more")
    return "\n".join(lines)


def _summary_text(d: BatchDescription) -> str:
    lines = [f"batch {d.id} ({d.kind}) {d.status}: {d.matched} matched, {d.done} done, {d.skipped} skipped, "
             f"{d.failed} failed" + (f", {d.pending} not reached" if d.pending else "")]
    if d.error:
        lines.append(f"  error: {d.error}")
    for g in d.outcomes:
        if g.outcome == "done" and not g.detail:
            continue
        more = ", ..." if g.count > len(g.workflow_ids) else ""
        lines.append(f"  {g.outcome} {g.count}: {g.detail or '-'} (e.g. {', '.join(g.workflow_ids)}{more})")
    return "\n".join(lines)


def _describe_text(d: BatchDescription) -> str:
    params = ", ".join(f"{k}={v}" for k, v in d.params.items() if k != "data")
    rows = [
        ("batch", d.id), ("kind", d.kind), ("filter", d.filter), ("params", params or "-"), ("status", d.status),
        ("progress", f"{d.done + d.skipped + d.failed}/{d.matched}: done {d.done}, skipped {d.skipped}, "
                     f"failed {d.failed}, pending {d.pending}"),
        ("executor", (d.executor or "-") + (" (executing now)" if d.executing else "")),
        ("created", f"{when(d.created_at)} by {d.created_by or '-'}"), ("updated", when(d.updated_at)),
        ("finished", when(d.finished_at)),
    ]
    if d.error:
        rows.append(("error", d.error))
    out = "\n".join(f"{k:<9} {v}" for k, v in rows)
    if d.outcomes:
        out += "\noutcomes:\n" + table([[g.outcome, str(g.count), g.detail or "-", ", ".join(g.workflow_ids)]
                                        for g in d.outcomes], ["OUTCOME", "RUNS", "REASON", "E.G."])
    return out


@main.group("batch")
def batch_group() -> None:
    """Batch operations: list, describe, cancel, wait (start one with `cairn terminate --where ...`)."""


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@batch_group.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@click.pass_obj
def batch_list(settings: Settings, limit: int, as_json: bool) -> None:
    """The namespace's batches, newest first."""

    @with_client
    async def go(client: Client) -> list[BatchDescription]:
        return await client.list_batches(limit=limit)

    got = run(go(settings))
    if as_json:
        click.echo(to_json({"batches": [d.to_json() for d in got]}))
    elif not got:
        click.echo("no batches")
    else:
        click.echo(table([[d.id, d.kind, d.status, f"{d.done}/{d.skipped}/{d.failed}/{d.matched}", when(d.created_at),
                           d.filter] for d in got],
                         ["BATCH ID", "KIND", "STATUS", "DONE/SKIPPED/FAILED/MATCHED", "CREATED", "FILTER"]))


@batch_group.command("describe")
@click.argument("batch_id")
@json_option
@click.pass_obj
def batch_describe(settings: Settings, batch_id: str, as_json: bool) -> None:
    """A batch: what it does, its progress, who executes it, what it did and why."""

    @with_client
    async def go(client: Client) -> BatchDescription:
        return await client.get_batch_handle(batch_id).describe()

    d = run(go(settings))
    click.echo(to_json(d.to_json()) if as_json else _describe_text(d))


@batch_group.command("cancel")
@click.argument("batch_id")
@json_option
@click.pass_obj
def batch_cancel(settings: Settings, batch_id: str, as_json: bool) -> None:
    """Stop a running batch after the chunk under way; what it did stays done."""

    @with_client
    async def go(client: Client) -> str:
        return await client.get_batch_handle(batch_id).cancel()

    status = run(go(settings))
    if as_json:
        click.echo(to_json({"batch_id": batch_id, "status": status}))
    elif status == "cancelled":
        click.echo(f"batch {batch_id} cancelled")
    else:
        click.echo(f"batch {batch_id} had already ended: {status}")


@batch_group.command("wait")
@click.argument("batch_id")
@click.option("--chunk-size", type=click.IntRange(1, 10_000), default=CHUNK_SIZE, show_default=True,
              help="Runs acted on per transaction, when executed here.")
@json_option
@click.pass_obj
def batch_wait(settings: Settings, batch_id: str, chunk_size: int, as_json: bool) -> None:
    """Follow a batch to its end, executing it here whenever nobody else does (after its
    executor died, or with no worker running); then print its summary."""
    progress = _Progress("batch", quiet=as_json)

    @with_client
    async def go(client: Client) -> BatchDescription:
        return await client.get_batch_handle(batch_id).wait(on_progress=progress, chunk_size=chunk_size)

    d = run(go(settings))
    progress.end()
    show_result(d, as_json)
