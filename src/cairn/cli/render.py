"""Terminal output of ``cairn describe`` and the progress line of ``cairn start --wait``.

On a terminal (or with ``FORCE_COLOR``/``TTY_COMPATIBLE`` set) tables and colours come
from rich; otherwise the output is plain aligned text with no escape codes, the same
lines scripts and tests have always read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cairn.cli._base import priority_text, table, when
from cairn.cli.llm_runs import LLM_CALL_HEADERS, echo_llm_calls, llm_call_rows, llm_totals_line
from cairn.store import runs

T = TypeVar("T")

STATUS_STYLES = {"running": "bold blue", "completed": "bold green", "failed": "bold red", "cancelled": "yellow",
                 "terminated": "bold magenta", "continued_as_new": "cyan", "timed_out": "bold red"}
_BREAKER_REASON = re.compile(r"^breaker (?P<name>\S+) is (?P<state>[\w-]+)")


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); ``is_terminal`` says whether to use it."""
    return Console(file=sys.stderr if stderr else sys.stdout, highlight=False, soft_wrap=True)


@dataclass
class Section:
    """A titled table of the describe output."""

    title: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Report:
    """What describe shows: key/value lines, then sections, then free lines (sagas, LLM)."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def _age(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "-"
    seconds = max((now - then).total_seconds(), 0.0)
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def activity_state(a: dict[str, Any], now: datetime) -> str:
    """One pending activity's state: running (heartbeat age), waiting for a breaker, rate
    limit or throttle (a ``Rescheduled`` last failure), or the time of its next try."""
    if a.get("lease_owner"):
        beat = f", heartbeat {_age(a['heartbeat_at'], now)}" if a.get("heartbeat_at") else ""
        return f"running on {a['lease_owner']} since {_age(a.get('started_at'), now)}{beat}"
    pause = a.get("pause") or {}
    if pause.get("reason") == "exhausted":
        return f"paused: {pause.get('retry_state')} (resume: cairn activity unpause)"
    if pause:
        return f"paused{': ' + pause['note'] if pause.get('note') else ''}"
    if a.get("paused"):
        return "held: its run is paused"
    if a.get("waiting_for_slot"):
        return f"waiting for a slot of concurrency key {a.get('concurrency_key')}"
    failure = a.get("last_failure") or {}
    until = when(a.get("available_at"))
    if failure.get("type") == "Rescheduled":
        kind, reason = failure.get("kind"), str(failure.get("reason") or "")
        if kind == "breaker":
            m = _BREAKER_REASON.match(reason)
            if m:
                return f"waiting for breaker {m['name']} ({m['state']}) until {until}"
            return f"waiting for breakers until {until} ({reason})"
        if kind == "rate_limit":
            return f"waiting for rate limit until {until} ({reason})"
        return f"throttled until {until} ({reason})"
    return f"next try {until}"


def pending_activity_rows(acts: list[dict[str, Any]], now: datetime | None = None) -> list[list[str]]:
    """The rows of describe's pending activities table."""
    now = now or datetime.now(UTC)
    rows = []
    for a in acts:
        failure = a.get("last_failure") or {}
        last = "" if failure.get("type") == "Rescheduled" else \
            f"{failure.get('type')}: {failure.get('message')}" if failure else ""
        rows.append([str(a["seq"]), str(a["activity_type"]), str(a["attempt"]), activity_state(a, now), last])
    return rows


def _at(value: Any) -> datetime | None:
    """A time from a pause's JSON (an ISO string)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def describe_report(d: Any) -> Report:
    """Everything ``cairn describe`` prints for a run, as data (rendered plain or rich)."""
    r = Report()
    r.fields += [("workflow", d.workflow_id), ("run", d.run_id), ("type", d.workflow_type), ("queue", d.queue),
                 ("status", d.status), ("started", when(d.created_at)), ("closed", when(d.closed_at)),
                 ("history", f"{d.history_length} events")]
    if d.failure:
        r.fields.append(("failure", f"{d.failure.get('type')}: {d.failure.get('message')}"))
    if d.reset_from:
        r.notes.append(f"{d.reset_from.get('kind', 'reset')} of run {d.reset_from.get('run_id')}"
                       f"{' at seq ' + str(d.reset_from['seq']) if d.reset_from.get('seq') else ''}: "
                       f"{d.reset_from.get('reason') or ''}")
    if d.search_attributes:
        r.fields.append(("search", json.dumps(d.search_attributes, sort_keys=True)))
    if d.memo is not None:
        r.fields.append(("memo", json.dumps(d.memo, sort_keys=True)))
    if d.parent:
        r.fields.append(("parent", f"{d.parent['workflow_id']} (run {d.parent['run_id']}, seq {d.parent['seq']}, "
                                   f"on parent close: {d.parent['parent_close_policy']})"))
    if d.continued_from:
        r.notes.append(f"continued from run {d.continued_from}")
    if d.continued_to:
        r.notes.append(f"continued as run {d.continued_to}")
    if d.execution_deadline:
        r.notes.append(f"execution deadline {when(d.execution_deadline)}")
    place = getattr(d, "priority", None)
    if place is not None:
        r.fields.append(("priority", priority_text(place.priority_key, place.fairness_key, place.fairness_weight)))
    if getattr(d, "concurrency_key", None):
        r.fields.append(("concurrency", f"key {d.concurrency_key}"
                                        f"{' (waiting for a slot: not started)' if d.waiting_for_slot else ''}"))
    if getattr(d, "paused", None):
        p = d.paused
        r.fields.append(("paused", f"since {when(_at(p.get('at')))} by {p.get('by')}"
                                   f"{': ' + p['note'] if p.get('note') else ''} (resume: cairn unpause)"))
    if d.workflow_task and d.workflow_task["failures"]:
        err = d.workflow_task["last_error"] or {}
        r.notes.append(f"workflow task failing ({d.workflow_task['failures']} attempts, next at "
                       f"{when(d.workflow_task['available_at'])}): {err.get('type')}: {err.get('message')}")
    for u in d.unserved:
        r.notes.append(f"{u['message']}: it waits for one")
    if d.children:
        r.sections.append(Section("children", ["SEQ", "WORKFLOW ID", "TYPE", "STATUS", "ON PARENT CLOSE", "RUN ID"],
                                  [[str(c["seq"]), c["workflow_id"], c["workflow_type"], c["status"],
                                    c["parent_close_policy"], c["run_id"]] for c in d.children]))
    if d.pending_activities:
        r.sections.append(Section("pending activities", ["SEQ", "ACTIVITY", "ATTEMPT", "STATE", "LAST FAILURE"],
                                  pending_activity_rows(d.pending_activities)))
    if d.pending_timers:
        r.sections.append(Section("timers", ["SEQ", "FIRES AT"],
                                  [[str(t["seq"]), when(t["fire_at"])] for t in d.pending_timers]))
    return r


def echo_describe(d: Any) -> None:
    """Prints describe's human output: rich on a terminal, plain text otherwise."""
    report = describe_report(d)
    out = console()
    if not out.is_terminal:
        for key, value in report.fields:
            click.echo(f"{key:<9} {value}")
        for note in report.notes:
            click.echo(note)
        for s in report.sections:
            click.echo(f"\n{s.title}:")
            click.echo(table(s.rows, s.headers))
        for saga in d.sagas:
            echo_saga(saga)
        if d.llm_calls:
            echo_llm_calls(d.llm_calls, d.llm_totals)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in report.fields:
        style = STATUS_STYLES.get(value, "") if key == "status" else "red" if key == "failure" else ""
        grid.add_row(key, Text(value, style=style))
    out.print(grid)
    for note in report.notes:
        out.print(Text(note, style="red" if note.startswith("workflow task failing") else "dim"))
    for s in report.sections:
        _print_section(out, s)
    for saga in d.sagas:
        _print_saga(out, saga)
    if d.llm_calls:
        _print_section(out, Section("llm calls", LLM_CALL_HEADERS, llm_call_rows(d.llm_calls)))
        if d.llm_totals:
            out.print(Text(llm_totals_line(d.llm_totals), style="bold"))


# Cell padding and borders a rich Table adds per column, and once per table.
_TABLE_CHARS_PER_COLUMN = 3
_TABLE_CHARS_EXTRA = 1


def _print_section(out: Console, s: Section) -> None:
    """A table, or, when it is wider than the terminal, folded into one block of
    ``HEADER value`` lines per row: every column shows, none is squeezed to nothing."""
    widths = [max([len(h), *(len(row[i]) for row in s.rows)]) for i, h in enumerate(s.headers)]
    if sum(widths) + _TABLE_CHARS_PER_COLUMN * len(widths) + _TABLE_CHARS_EXTRA <= out.width:
        t = Table(title=s.title, title_justify="left", title_style="bold", header_style="bold cyan")
        for h in s.headers:
            t.add_column(h, overflow="fold")
        for row in s.rows:
            t.add_row(*[Text(c, style=_cell_style(h, c)) for h, c in zip(s.headers, row, strict=True)])
        out.print(t)
        return
    out.print(Text(s.title, style="bold"))
    for row in s.rows:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column(overflow="fold")
        for h, c in zip(s.headers, row, strict=True):
            grid.add_row(h, Text(c, style=_cell_style(h, c)))
        out.print(grid)
        out.print()


def _cell_style(header: str, cell: str) -> str:
    if header == "STATUS":
        return STATUS_STYLES.get(cell, "")
    if header == "STATE":
        return "yellow" if cell.startswith(("waiting", "throttled")) else "green" if cell.startswith("running") else ""
    if header in ("LAST FAILURE", "FAILURE"):
        return "red"
    return ""


def _print_saga(out: Console, saga: dict[str, Any]) -> None:
    mode = "parallel" if saga["parallel_compensation"] else "sequential"
    mode += ", continue on error" if saga["continue_on_error"] else ", stop at first error"
    style = "green" if saga["status"] == "completed" else "yellow" if saga["status"] == "compensated" else "red"
    out.print(Text.assemble(f"saga {saga['id']}: ", (str(saga["status"]), style), f" ({mode})"))
    if saga["reason"]:
        out.print(Text(f"reason    {saga['reason'].get('type')}: {saga['reason'].get('message')}", style="red"))
    t = Table(header_style="bold cyan")
    for h in ("ROLE", "SEQ", "ACTIVITY", "STATUS", "ATTEMPTS", "FAILURE"):
        t.add_column(h)
    for role, key in (("step", "steps"), ("compensation", "compensations")):
        for a in saga[key]:
            t.add_row(role, "" if a["seq"] is None else str(a["seq"]), str(a["activity_type"]),
                      Text(str(a["status"]), style=STATUS_STYLES.get(str(a["status"]), "")),
                      str(a.get("attempts") or ""), Text((a.get("failure") or {}).get("message") or "", style="red"))
    if t.row_count:
        out.print(t)


# ---------------------------------------------------------------- start --wait progress

PROGRESS_INTERVAL_SECONDS = 0.5


async def with_progress(client: Any, workflow_id: str, waiting: Awaitable[T]) -> T:
    """Awaits ``waiting`` (the run's result); on a terminal (stderr) meanwhile shows a live
    line: status, last event, activities done, elapsed. Plain (no line) otherwise."""
    err = console(stderr=True)
    task = asyncio.ensure_future(waiting)
    if not err.is_terminal:
        return await task
    began = time.monotonic()
    line = Text(f"{workflow_id}: starting")
    with Live(line, console=err, refresh_per_second=8, transient=False) as live:
        while not task.done():
            try:
                line = await _progress_line(client, workflow_id, time.monotonic() - began)
                live.update(line)
            except Exception as exc:  # progress is best effort: the result is what matters
                live.update(Text(f"{workflow_id}: ({exc})", style="dim"))
            await asyncio.wait({task}, timeout=PROGRESS_INTERVAL_SECONDS)
        with contextlib.suppress(Exception):
            live.update(await _progress_line(client, workflow_id, time.monotonic() - began))
    return await task


async def _progress_line(client: Any, workflow_id: str, elapsed: float) -> Text:
    async with client.pool.connection() as c:
        row = await runs.progress(c, client.namespace, workflow_id)
    if row is None:
        return Text(f"{workflow_id}: no such run")
    status = row.status
    return Text.assemble(
        (f"{workflow_id} ", "bold"), (status, STATUS_STYLES.get(status, "")),
        f"  last event {row.last_type} (#{row.last_seq})",
        f"  activities done {row.activities_done}",
        f"  elapsed {elapsed:.1f} s")


def echo_saga(saga: dict[str, Any]) -> None:
    """A saga's state in describe's plain output."""
    mode = "parallel" if saga["parallel_compensation"] else "sequential"
    mode += ", continue on error" if saga["continue_on_error"] else ", stop at first error"
    click.echo(f"\nsaga {saga['id']}: {saga['status']} ({mode})")
    if saga["reason"]:
        click.echo(f"reason    {saga['reason'].get('type')}: {saga['reason'].get('message')}")
    rows = [[role, "" if a["seq"] is None else str(a["seq"]), str(a["activity_type"]), a["status"],
             str(a.get("attempts") or ""), (a.get("failure") or {}).get("message") or ""]
            for role, key in (("step", "steps"), ("compensation", "compensations")) for a in saga[key]]
    if rows:
        click.echo(table(rows, ["ROLE", "SEQ", "ACTIVITY", "STATUS", "ATTEMPTS", "FAILURE"]))


PROGRESS_EVERY_SECONDS = 1.0  # progress lines when stderr is not a terminal


class ProgressLine:
    """A progress line on stderr: rewritten in place on a terminal, else at most a line a
    second (and the last one); nothing with ``quiet`` (``--json``)."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.drawn = False

    def show(self, line: str, *, final: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty and now - self.last < PROGRESS_EVERY_SECONDS and not final:
            return
        self.last = now
        if self.tty:
            click.echo("\r" + line + "\x1b[K", nl=False, err=True)
            self.drawn = True
        else:
            click.echo(line, err=True)

    def end(self) -> None:
        if self.drawn:
            click.echo("", err=True)
