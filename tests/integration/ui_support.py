"""Real runs for the web view's tests: a completed pipeline with a retried activity, a
failed payment (its id holds markup), a compensated saga, an LLM call against the fake
provider, and a run waiting on a timer after a signal. Plus a PNG reader for screenshots."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from cairn import ApplicationError, Client, RetryPolicy, activity, workflow
from cairn.llm import ChatRequest, chat, configure_providers
from cairn.llm import fake as f
from cairn.llm import providers as providers_mod
from cairn.ui import connect_read_only, create_app
from support import wait_until

FAST = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=5, jitter=0.0)
MODEL = "deepseek-chat"
# The fake's usage and deepseek-chat's prices: (600*0.27 + 400*0.07 + 50*1.10) / 1e6 USD.
LLM_USAGE = {"input_tokens": 1000, "cached_input_tokens": 400, "output_tokens": 50}
LLM_COST = "$0.000245"
EVIL_ID = '<script>alert("x")</script>/pay&<b>'
# How often flaky_fetch fails before it succeeds, per key.
FLAKY_FAILURES = 2
_calls: dict[str, int] = {}


@activity.defn
async def flaky_fetch(key: str) -> str:
    _calls[key] = _calls.get(key, 0) + 1
    if _calls[key] <= FLAKY_FAILURES:
        raise ApplicationError(f"transient failure {_calls[key]}", type="Transient")
    return f"fetched {key}"


@activity.defn
async def shout(text: str) -> str:
    return text.upper()


@activity.defn
async def charge(amount: int) -> str:
    raise ApplicationError(f"card declined for {amount} <img src=x onerror=alert(1)>", type="CardDeclined",
                           non_retryable=True)


@activity.defn
async def reserve(item: str) -> str:
    return f"{item} booked"


@activity.defn
async def release(booking: str) -> str:
    return f"{booking}: released"


@activity.defn
async def book_flight(item: str) -> str:
    raise ApplicationError(f"no {item} left", type="SoldOut", non_retryable=True)


@workflow.defn
async def ui_pipeline(key: str) -> dict[str, str]:
    fetched = await workflow.execute_activity(flaky_fetch, key, start_to_close_timeout=10, retry_policy=FAST)
    loud = await workflow.execute_activity(shout, fetched, start_to_close_timeout=10)
    await workflow.sleep(0.05)
    return {"fetched": fetched, "loud": loud}


@workflow.defn
async def ui_payment(amount: int) -> str:
    return await workflow.execute_activity(charge, amount, start_to_close_timeout=10, retry_policy=FAST)


@workflow.defn
async def ui_trip(city: str) -> list[str]:
    out = []
    async with workflow.saga() as saga:
        for item in ("car", "hotel"):
            booking = await workflow.execute_activity(reserve, f"{city} {item}", start_to_close_timeout=10)
            saga.compensate(release, booking, start_to_close_timeout=10, retry_policy=FAST)
            out.append(booking)
        out.append(await workflow.execute_activity(book_flight, f"{city} flight", start_to_close_timeout=10))
    return out


@workflow.defn
async def ui_summarize(text: str) -> str:
    reply = await chat(ChatRequest(model=MODEL, messages=[{"role": "user", "content": f"Summarize: {text}"}],
                                   max_tokens=40), retry_policy=FAST)
    return reply.text


@workflow.defn
async def ui_wait(hours: float) -> str:
    note = await workflow.wait_signal("nudge")
    await workflow.sleep(timedelta(hours=hours))
    return str(note)


WORKFLOWS = [ui_pipeline, ui_payment, ui_trip, ui_summarize, ui_wait]
ACTIVITIES = [flaky_fetch, shout, charge, reserve, release, book_flight]


async def populate(client: Client, start_worker: Callable[..., Any], fake_llm: Any) -> dict[str, Any]:
    """Runs the five workflows to their expected states; returns their handles by name."""
    _calls.clear()
    configure_providers([fake_llm.provider_config(models=[MODEL])])
    fake_llm.script([f.ok("A cat sat.", **LLM_USAGE)])
    await start_worker(workflows=WORKFLOWS, activities=ACTIVITIES)
    runs = {
        "pipeline": await client.start(ui_pipeline, "k1", id="pipeline-1"),
        "payment": await client.start(ui_payment, 42, id=EVIL_ID),
        "trip": await client.start(ui_trip, "lisbon", id="trip-lisbon"),
        "llm": await client.start(ui_summarize, "the cat sat on the mat", id="summary-1"),
        "wait": await client.start(ui_wait, 1.0, id="waiting-1"),
    }
    assert await runs["pipeline"].result(timeout=30) == {"fetched": "fetched k1", "loud": "FETCHED K1"}
    assert await runs["llm"].result(timeout=30) == "A cat sat."
    for name in ("payment", "trip"):
        with contextlib.suppress(Exception):
            await runs[name].result(timeout=30)
        assert (await runs[name].describe()).status == "failed"
    await runs["wait"].signal("nudge", {"from": "test"})

    async def timer_started() -> bool:
        return any(e.type == "TimerStarted" for e in await runs["wait"].history())

    await wait_until(timer_started, timeout=20, what="the waiting run's timer")
    return runs


def reset_providers() -> None:
    providers_mod._registry = None


@contextlib.asynccontextmanager
async def ui_server(db_url: str, namespace: str = "default") -> AsyncIterator[str]:
    """The web view on 127.0.0.1 (a free port) over a read-only client; yields its base URL."""
    client = await connect_read_only(db_url, namespace=namespace)
    runner = web.AppRunner(create_app(client), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await client.close()


# ---------------------------------------------------------------- PNG (stdlib only)


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(width, height, RGB pixels) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    height = depth = color = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert body[12] == 0, "interlaced PNG"
        elif kind == b"IDAT":
            idat += body
    assert depth == 8, f"unsupported PNG bit depth {depth}"
    assert color in (2, 6), f"unsupported PNG colour type {color}"
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(line)
        prev = line
    pixels = [(r[i], r[i + 1], r[i + 2]) for r in rows for i in range(0, stride, bpp)]
    return width, height, pixels


def near(pixel: tuple[int, int, int], rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(p - c) <= tolerance for p, c in zip(pixel, rgb, strict=True))
