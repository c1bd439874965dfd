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
@click.option("--failure-rate", type=click.FloatRange(0, 1), default=None,
              help="Storm: answer this share of requests with --failure-status (seeded).")
@click.option("--failure-status", type=click.IntRange(400, 599), default=500, show_default=True,
              help="Storm: the status of those failures.")
@click.option("--burst-every", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Storm: a 429 burst (Retry-After to its end) every SECONDS.")
@click.option("--burst-seconds", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Storm: how long each burst lasts.")
@click.option("--burst-first", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Storm: when the first burst starts (default: after --burst-every).")
@click.option("--rpm", type=click.IntRange(min=1), default=None,
              help="Storm: at most this many requests per --rpm-window (sliding), 429 above it.")
@click.option("--rpm-window", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="Storm: the rpm limit's window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Storm: the failure draws' seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the URLs as JSON.")
def fake_llm(host: str, port: int, script_file: str | None, key_env: str | None, failure_rate: float | None,
             failure_status: int, burst_every: float | None, burst_seconds: float, burst_first: float | None,
             rpm: int | None, rpm_window: float, seed: int, as_json: bool) -> None:
    """Run a fake OpenAI/Anthropic-compatible LLM provider until interrupted.

    It prints its base URL (for a provider's base_url), answers /v1/chat/completions and
    /v1/messages following the fault script, and serves its request log at /_fake/log
    (POST /_fake/script loads another script, POST /_fake/storm starts a storm, POST
    /_fake/reset clears all three). Any of --failure-rate, --burst-every or --rpm starts
    in storm mode: the requests the script does not answer meet 429 bursts, the rpm limit
    and the failure rate.
    """
    from cairn.llm.fake import FakeProvider, Storm, parse_script  # start-up time: aiohttp loads only for this command

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
    storm: Storm | None = None
    if failure_rate is not None or burst_every is not None or rpm is not None:
        storm = Storm(failure_rate=failure_rate or 0.0, failure_status=failure_status, burst_every=burst_every,
                      burst_seconds=burst_seconds, burst_first=burst_first, rpm=rpm, rpm_window=rpm_window,
                      seed=seed)

    async def serve() -> None:
        try:
            root = await provider.start(host, port)
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror}", 1) from None
        if storm is not None:
            provider.storm(storm)  # its clock starts once the port is open
        info = {"url": provider.url, "root": root, "log": f"{root}/_fake/log", "steps": len(steps),
                "storm": None if storm is None else storm.model_dump()}
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
