"""``cairn fake-llm``: the fake LLM provider in the foreground, for the demo and manual tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal

import click

from cairn.cli._base import fail, main, parse_json
from cairn.errors import InputValidationError


@main.command("fake-llm")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), show_default=True,
              help="Port to listen on (0: a free one, printed at start).")
@click.option("--script", "script_file", type=click.Path(dir_okay=False), default=None,
              help='A JSON fault script: a list of steps, or {"steps": [...], "default": {...}}.')
@click.option("--key-env", default=None, metavar="NAME",
              help="Require the key held by this environment variable (401 otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the URLs as JSON.")
def fake_llm(host: str, port: int, script_file: str | None, key_env: str | None, as_json: bool) -> None:
    """Run a fake OpenAI/Anthropic-compatible LLM provider until interrupted.

    It prints its base URL (for a provider's base_url), answers /v1/chat/completions and
    /v1/messages following the fault script, and serves its request log at /_fake/log
    (POST /_fake/script loads another script, POST /_fake/reset clears both).
    """
    from cairn.llm.fake import FakeProvider, parse_script

    try:
        steps, default = parse_script(parse_json(f"@{script_file}", "script")) if script_file else ([], None)
    except InputValidationError as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        raise fail(f"bad script {script_file!r}: {exc}") from None
    key = None
    if key_env is not None:
        key = os.environ.get(key_env)
        if not key:
            raise fail(f"environment variable {key_env} is not set")
    provider = FakeProvider(api_key=key)
    provider.script(steps, default)

    async def serve() -> None:
        try:
            root = await provider.start(host, port)
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror}", 1) from None
        info = {"url": provider.url, "root": root, "log": f"{root}/_fake/log", "steps": len(steps)}
        click.echo(json.dumps(info) if as_json else f"fake LLM provider at {provider.url} (log: {info['log']})")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await provider.stop()

    asyncio.run(serve())
