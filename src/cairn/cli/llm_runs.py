"""The LLM parts of the run commands: LLM calls in ``cairn describe`` and
``cairn history --follow`` (new events and streamed tokens, live)."""

from __future__ import annotations

import json
from typing import Any

import click

from cairn.cli._base import Settings, run, table, with_client
from cairn.client import Client
from cairn.client.follow import StreamChunk, follow
from cairn.engine.history import Event
from cairn.views import summarize


def _num(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


LLM_CALL_HEADERS = ["SEQ", "MODEL", "IN", "CACHED", "OUT", "COST", "TTFT", "ATTEMPT", "SKIPPED"]


def llm_call_rows(calls: list[dict[str, Any]]) -> list[list[str]]:
    """The rows of describe's ``llm calls`` table (plain and rich), under LLM_CALL_HEADERS."""
    return [[str(c["seq"]), f"{c['provider']}/{c['model']}", _num(c["input_tokens"]),
             _num(c["cached_input_tokens"]), _num(c["output_tokens"]), _num(c["cost_usd"], "${:.6f}"),
             _num(c["ttft_seconds"], "{:.3f} s"), _num(c["attempt"]),
             ", ".join(f"{s['model']}: {s['reason']}" for s in c["skipped"])] for c in calls]


def llm_totals_line(totals: dict[str, Any]) -> str:
    """The run's LLM totals, one line."""
    cost = _num(totals["cost_usd"], "${:.6f}") if totals["cost_usd"] is not None else "unknown"
    return (f"llm total {totals['calls']} call(s), {totals['input_tokens']} in "
            f"({totals['cached_input_tokens']} cached) / {totals['output_tokens']} out tokens, cost {cost}")


def echo_llm_calls(calls: list[dict[str, Any]], totals: dict[str, Any] | None) -> None:
    """The ``llm calls`` table of ``cairn describe`` and the run's totals."""
    click.echo("\nllm calls:")
    click.echo(table(llm_call_rows(calls), LLM_CALL_HEADERS))
    if totals:
        click.echo(llm_totals_line(totals))


def follow_history(settings: Settings, workflow_id: str, run_id: str | None, as_json: bool) -> None:
    """Prints the run's events, then new events and LLM tokens as they come, until it closes.

    Text: one line per event (as ``cairn history``), one ``  llm <seq>#<attempt> | text``
    line per streamed batch, and ``  llm <seq>#<attempt> restarts the stream`` when a
    retried attempt starts over. ``--json``: one JSON object per line.
    """

    @with_client
    async def go(client: Client) -> None:
        handle = client.get_handle(workflow_id, run_id)
        async for item in follow(handle):
            if isinstance(item, StreamChunk):
                if as_json:
                    click.echo(json.dumps({"stream": item._asdict()}))
                elif item.restart:
                    click.echo(f"  llm {item.activity_seq}#{item.attempt} restarts the stream "
                               "(the previous attempt failed)")
                else:
                    click.echo(f"  llm {item.activity_seq}#{item.attempt} | {item.text!r}")
            elif isinstance(item, Event):
                if as_json:
                    click.echo(json.dumps({"event": item.to_json()}, default=str))
                else:
                    at = item.at.astimezone().strftime("%H:%M:%S.%f")[:-3] if item.at else ""
                    click.echo(f"{item.seq:<4} {at:<12} {item.type:<22} {summarize(item)[:140]}")

    run(go(settings))
