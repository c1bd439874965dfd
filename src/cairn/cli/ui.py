"""``cairn ui``: the read-only web view on localhost."""

from __future__ import annotations

import click

from cairn.cli._base import Settings, main, run
from cairn.ui.server import DEFAULT_HOST, DEFAULT_PORT, is_loopback, serve


@main.command("ui")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on. Anything but loopback exposes every run's payloads to the network.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--open/--no-open", "open_browser", default=False, show_default=True,
              help="Open the page in a browser once it is served.")
@click.pass_obj
def ui_cmd(settings: Settings, host: str, port: int, open_browser: bool) -> None:
    """Serve a read-only web view of the runs (list, timelines, payloads, failures, LLM cost).

    Runs until Ctrl-C. It only reads: nothing on the page starts, signals or cancels a run.
    """
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}: anyone who can reach it can read every run's payloads",
                   err=True)

    def ready(address: str) -> None:
        click.echo(f"Cairn web view on {address} (read-only; Ctrl-C to stop)")

    run(serve(settings.database_url, namespace=settings.namespace, host=host, port=port,
              open_browser=open_browser, ready=ready))
