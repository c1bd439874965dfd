"""Retention, purges and the archive: ``cairn namespace list|describe|update``, ``cairn
purge`` and ``cairn archive show``.

``cairn purge`` checks everything first (exit 2, nothing written), shows what it would
remove (``--dry-run`` stops there), asks on a terminal (``--yes`` does not; elsewhere
``--yes`` is required), then purges chunk by chunk with its progress on stderr and prints
a summary. Interrupted, what was purged stays purged and the rest stays: run it again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cairn.cli._base import EXIT_BAD_INPUT, Settings, fail, main, run, table, to_json, when, with_client
from cairn.cli.render import ProgressLine
from cairn.client import Client, NamespaceSettings, PurgeSummary
from cairn.client.retention import FOREVER
from cairn.store import archive as archives
from cairn.store.namespaces import describe_retention
from cairn.store.retention import BUSY_OPERATOR, CHUNK_SIZE, PurgeProgress

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@main.group("namespace")
def namespace_group() -> None:
    """A namespace's retention (how long closed runs are kept) and archive."""


def _settings_text(s: NamespaceSettings) -> str:
    return (f"namespace {s.namespace}: closed runs kept {describe_retention(s.retention)}"
            + (" after they close" if s.retention is not None else "")
            + f"; archive: {s.archive_uri or 'none'}")


@namespace_group.command("describe")
@json_option
@click.pass_obj
def namespace_describe(settings: Settings, as_json: bool) -> None:
    """Show the namespace's retention and archive (--namespace picks it)."""

    @with_client
    async def go(client: Client) -> NamespaceSettings:
        return await client.get_namespace_handle().describe()

    s = run(go(settings))
    click.echo(to_json(s.to_json()) if as_json else _settings_text(s))


@namespace_group.command("update")
@click.option("--retention", default=None, metavar="DURATION",
              help="Keep closed runs this long (30d, 36h, 2w, a number of days; at least 1h), or 'forever'.")
@click.option("--archive", default=None, metavar="URI",
              help="Archive runs before removing them, into this directory (file:///dir or /dir); 'none': stop.")
@json_option
@click.pass_obj
def namespace_update(settings: Settings, retention: str | None, archive: str | None, as_json: bool) -> None:
    """Set the namespace's retention and/or archive; workers apply them."""
    if retention is None and archive is None:
        raise click.UsageError("give --retention and/or --archive")
    args: dict[str, Any] = {}
    if retention is not None:
        args["retention"] = retention
    if archive is not None:
        args["archive"] = None if archive.strip().lower() in ("none", *FOREVER) else archive

    @with_client
    async def go(client: Client) -> NamespaceSettings:
        return await client.get_namespace_handle().update(**args)

    s = run(go(settings))
    click.echo(to_json(s.to_json()) if as_json else _settings_text(s))


@namespace_group.command("list")
@json_option
@click.pass_obj
def namespace_list(settings: Settings, as_json: bool) -> None:
    """Every namespace with runs or settings, with its retention and archive."""

    @with_client
    async def go(client: Client) -> list[NamespaceSettings]:
        return await client.get_namespace_handle().list_all()

    rows = run(go(settings))
    if as_json:
        click.echo(to_json([s.to_json() for s in rows]))
        return
    click.echo(table([[s.namespace, describe_retention(s.retention), s.archive_uri or "-"] for s in rows],
                     ["NAMESPACE", "RETENTION", "ARCHIVE"]))


@main.command("purge")
@click.option("--where", default=None, metavar="FILTER",
              help="Purge the closed runs this filter matches (as `cairn list --where`); without it, every closed run.")
@click.option("--older-than", default=None, metavar="DURATION",
              help="Only runs closed longer ago than this (30d, 36h, a number of days).")
@click.option("--dry-run", is_flag=True, help="Print what would be purged, and some of it; write nothing.")
@click.option("--archive", "archive_to", default=None, metavar="DIR",
              help="Archive each run first, into this directory (default: the namespace's archive, if any).")
@click.option("--no-archive", is_flag=True, help="Do not archive, even if the namespace has an archive.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--chunk-size", type=click.IntRange(1, 10_000), default=CHUNK_SIZE, show_default=True,
              help="Runs removed per transaction.")
@click.option("--busy", type=click.FloatRange(0.01, 1.0), default=BUSY_OPERATOR, show_default=True,
              help="Fraction of the time spent purging (it pauses in between; 1: no pause).")
@json_option
@click.pass_obj
def purge_cmd(settings: Settings, where: str | None, older_than: str | None, dry_run: bool, archive_to: str | None,
              no_archive: bool, yes: bool, chunk_size: int, busy: float, as_json: bool) -> None:
    """Remove closed runs and everything of theirs (open runs are never purged)."""
    if archive_to is not None and no_archive:
        raise click.UsageError("--archive and --no-archive contradict each other")
    target: str | bool = False if no_archive else archive_to if archive_to is not None else True
    args: dict[str, Any] = {"where": where, "older_than": older_than, "archive": target}

    @with_client
    async def look(client: Client) -> PurgeSummary:
        return await client.get_namespace_handle().purge(dry_run=True, **args)

    preview = run(look(settings))
    if dry_run:
        click.echo(to_json(preview.to_json()) if as_json else _preview_text(preview))
        return
    if preview.runs == 0:
        click.echo(to_json(preview.to_json()) if as_json else "no closed run to purge: nothing to do\n"
                   + _kept_text(preview))
        return
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise fail(f"purge of {preview.runs} closed runs: add --yes to confirm (or --dry-run to look first)",
                       EXIT_BAD_INPUT)
        click.echo(_preview_text(preview), err=True)
        click.confirm(f"Purge the {preview.runs} closed runs, for good?", abort=True, err=True)

    progress = _Progress(preview.runs, quiet=as_json)

    @with_client
    async def go(client: Client) -> PurgeSummary:
        return await client.get_namespace_handle().purge(chunk_size=chunk_size, busy=busy, on_progress=progress,
                                                         **args)

    out = run(go(settings))
    progress.end()
    click.echo(to_json(out.to_json()) if as_json else _summary_text(out))


def _kept_text(p: PurgeSummary) -> str:
    parts = [f"{n} {what}" for n, what in ((p.open, "open (never purged)"),
                                           (p.young, f"closed after {when(p.cutoff)}"),
                                           (p.held, "held back (parent open, or a running batch's target)")) if n]
    return f"not purged: {', '.join(parts)}" if parts else ""


def _n(count: int, noun: str) -> str:
    """``1 closed run``, ``2 closed runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _preview_text(p: PurgeSummary) -> str:
    statuses = ", ".join(f"{s} {n}" for s, n in sorted(p.by_status.items())) or "none"
    lines = [f"would purge {_n(p.runs, 'closed run')} of namespace {p.namespace} ({statuses}), closed before "
             f"{when(p.cutoff)}" + (f", archived into {p.archive}" if p.archive else ", not archived")]
    kept = _kept_text(p)
    if kept:
        lines.append(kept)
    if p.sample:
        lines.append(table([[s["workflow_id"], s["run_id"], s["status"], when(s["closed_at"])] for s in p.sample],
                           ["WORKFLOW ID", "RUN ID", "STATUS", "CLOSED"]))
    return "\n".join(lines)


def _summary_text(p: PurgeSummary) -> str:
    rate = f" ({p.runs / p.seconds:.0f} runs/s)" if p.seconds > 0 else ""
    lines = [f"purged {_n(p.runs, 'closed run')} ({_n(p.events, 'event')}) of namespace {p.namespace} in "
             f"{_n(p.chunks, 'chunk')}, "
             f"{p.seconds:.1f} s{rate}"]
    if p.files:
        lines.append(f"archived into {_n(len(p.files), 'file')} under {p.archive}")
    kept = _kept_text(p)
    if kept:
        lines.append(kept)
    return "\n".join(lines)


class _Progress(ProgressLine):
    """A purge's progress (see ProgressLine)."""

    def __init__(self, expected: int, *, quiet: bool) -> None:
        super().__init__(quiet=quiet)
        self.expected = expected

    def __call__(self, p: PurgeProgress) -> None:
        pct = min(100, 100 * p.runs // self.expected) if self.expected else 100
        self.show(f"purge: {p.runs}/{self.expected} ({pct}%), {p.events} events, {p.rate:.0f} runs/s")


@main.group("archive")
def archive_group() -> None:
    """Read runs from an archive (written by retention and `cairn purge`)."""


@archive_group.command("show")
@click.argument("workflow_id")
@click.option("--run-id", default=None, help="The run (default: every archived run of the id; --json: the last).")
@click.option("--archive", "archive_to", default=None, metavar="DIR",
              help="The archive (default: the namespace's archive).")
@json_option
@click.pass_obj
def archive_show(settings: Settings, workflow_id: str, run_id: str | None, archive_to: str | None,
                 as_json: bool) -> None:
    """Find an archived run; --json prints it as `cairn history --json` does (a file `cairn replay` reads)."""

    async def where() -> Path:
        if archive_to is not None:
            return archives.path_of(archive_to)

        @with_client
        async def go(client: Client) -> str | None:
            return (await client.get_namespace_handle().describe()).archive_uri

        uri = await go(settings)
        if uri is None:
            raise fail(f"namespace {settings.namespace} has no archive: give --archive DIR")
        return archives.path_of(uri)

    root = run(where())
    found = list(archives.find(root, settings.namespace, workflow_id, run_id=run_id))
    if not found:
        raise fail(f"no archived run of workflow {workflow_id!r}" + (f", run {run_id}" if run_id else "")
                   + f" in {root / settings.namespace}")
    if as_json:
        click.echo(to_json(found[-1].document))
        return
    click.echo(table([[r.workflow_id, r.run_id, str(r.document.get("status")), str(r.document.get("closed_at")),
                       str(len(r.document["events"])), str(r.path)] for r in found],
                     ["WORKFLOW ID", "RUN ID", "STATUS", "CLOSED", "EVENTS", "FILE"]))
