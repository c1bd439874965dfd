"""The storm provider: a fake OpenAI-compatible chat provider for the LLM workload.

One process, started by bench/run.py for each run (the same flags and seed for every
system), listening on 127.0.0.1 only:

- ``POST /v1/chat/completions``: an OpenAI chat completion with usage, after a latency of
  ``--latency-min-ms``..``--latency-max-ms``; or an error answer (below).
- ``GET /_log``: the request log so far (JSON lines, as in ``--log``).
- ``GET /_health``: ``ok``.

What a request gets, checked in this order:

1. **burst** (429): the burst clock starts at the first chat request; burst k (k >= 1)
   covers ``[t0 + k*burst_every, t0 + k*burst_every + burst_seconds)``. Every request in it
   is answered 429 with ``Retry-After`` = the seconds to the burst's end, rounded up.
2. **rpm** (429): a true sliding window: a request arriving when the last ``--window``
   seconds already hold ``--rpm`` *admitted* requests is answered 429 with ``Retry-After`` =
   the seconds until the oldest of them leaves the window, rounded up.
3. Otherwise the request is **admitted**: it counts toward the RPM window (so 500s count,
   as real providers count every request they process; 429s do not count).
4. **fail** (500) with probability ``--fail-rate``, else **ok** (200). The draw is a hash of
   (seed, call key, how many admitted requests that key had before): the k-th admitted
   request of a given call fails or not identically for every system, whatever the order
   in which requests arrive. The latency is drawn the same way.

The call key is ``<workflow-id>/<n>`` from a ``call <workflow-id>/<n>`` marker in the last
user message (requests without one get the key ``-``).

Log (one JSON object per request, ``--log`` file and ``GET /_log``): ``t`` arrival (epoch
s), ``end`` answer time, ``key``, ``status``, ``why`` (ok/fail/burst/rpm), ``ra``
(Retry-After sent, if any), ``in_window`` (admitted requests in the window on arrival).

Stops on SIGTERM/SIGINT or after ``--max-seconds``, flushing the log.

    python bench/storm_provider.py --port 0 --rpm 1800 --log /tmp/storm.jsonl --ready-file /tmp/port
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

KEY_RE = re.compile(r"call (\S+/\d+)")


class Storm:
    """The provider's state: burst clock, RPM window, per-key counters, log."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.t0: float | None = None
        self.window: collections.deque[float] = collections.deque()
        self.admitted_per_key: collections.Counter[str] = collections.Counter()
        self.log: list[dict[str, Any]] = []
        self.log_file = open(a.log, "a", buffering=1) if a.log else None  # noqa: SIM115 (closed at exit)
        self.count = 0

    def draw(self, key: str, k: int, salt: str) -> float:
        """A uniform [0, 1) from (seed, key, k, salt): the same for every system."""
        h = hashlib.blake2b(f"{self.a.seed}|{salt}|{key}|{k}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64

    def burst_end(self, now: float) -> float | None:
        """The end of the burst ``now`` falls in, or None."""
        assert self.t0 is not None
        every, length = self.a.burst_every, self.a.burst_seconds
        if every <= 0 or length <= 0:
            return None
        k = math.floor((now - self.t0) / every)
        if k < 1:
            return None
        start = self.t0 + k * every
        return start + length if now < start + length else None

    def decide(self, key: str, now: float) -> tuple[int, str, float | None, float]:
        """(status, why, retry_after, latency_s) for a request arriving now."""
        if self.t0 is None:
            self.t0 = now
        end = self.burst_end(now)
        if end is not None:
            return 429, "burst", float(max(1, math.ceil(end - now))), 0.0
        horizon = now - self.a.window
        while self.window and self.window[0] <= horizon:
            self.window.popleft()
        if len(self.window) >= self.a.rpm:
            free_at = self.window[0] + self.a.window
            return 429, "rpm", float(max(1, math.ceil(free_at - now))), 0.0
        self.window.append(now)
        k = self.admitted_per_key[key]
        self.admitted_per_key[key] += 1
        span = max(self.a.latency_max_ms - self.a.latency_min_ms, 0)
        latency = (self.a.latency_min_ms + span * self.draw(key, k, "latency")) / 1000
        if self.draw(key, k, "fail") < self.a.fail_rate:
            return 500, "fail", None, latency
        return 200, "ok", None, latency

    def record(self, entry: dict[str, Any]) -> None:
        self.log.append(entry)
        if self.log_file is not None:
            self.log_file.write(json.dumps(entry) + "\n")


def call_key(body: Any) -> str:
    try:
        for m in reversed(body.get("messages") or []):
            if m.get("role") == "user":
                found = KEY_RE.search(str(m.get("content") or ""))
                if found:
                    return found.group(1)
    except AttributeError:
        pass
    return "-"


def error_body(why: str, message: str) -> dict[str, Any]:
    kinds = {"burst": ("requests", "rate_limit_exceeded"), "rpm": ("requests", "rate_limit_exceeded"),
             "fail": ("server_error", "internal_error")}
    kind, code = kinds[why]
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


def make_app(storm: Storm) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        now = time.time()
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": {"message": "malformed JSON", "type": "invalid_request_error"}},
                                     status=400)
        key = call_key(body)
        status, why, retry_after, latency = storm.decide(key, now)
        storm.count += 1
        entry: dict[str, Any] = {"t": round(now, 4), "key": key, "status": status, "why": why,
                                 "in_window": len(storm.window)}
        headers: dict[str, str] = {"x-request-id": f"req-{storm.count}"}
        if retry_after is not None:
            headers["retry-after"] = str(int(retry_after))
            entry["ra"] = retry_after
        if latency:
            await asyncio.sleep(latency)
        entry["end"] = round(time.time(), 4)
        storm.record(entry)
        if status == 429:
            what = ("the provider is overloaded (burst)" if why == "burst"
                    else f"Rate limit reached: {storm.a.rpm} requests per {storm.a.window:g} s")
            return web.json_response(error_body(why, what), status=429, headers=headers)
        if status == 500:
            return web.json_response(error_body(why, "The server had an error processing your request."),
                                     status=500, headers=headers)
        model = str(body.get("model") or "storm-model")
        prompt = sum(len(str(m.get("content") or "")) for m in body.get("messages") or []) // 4 + 1
        answer = {"id": f"chatcmpl-{storm.count}", "object": "chat.completion", "created": int(now), "model": model,
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": f"ok {key}"}}],
                  "usage": {"prompt_tokens": prompt, "completion_tokens": 3, "total_tokens": prompt + 3}}
        return web.json_response(answer, headers=headers)

    async def get_log(_: web.Request) -> web.Response:
        return web.Response(text="".join(json.dumps(e) + "\n" for e in storm.log), content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/_log", get_log)
    app.router.add_get("/_health", health)
    return app


def write_ready(path: str, port: int) -> None:
    """The port, written atomically (a reader never sees an empty file)."""
    tmp = Path(path + ".tmp")
    tmp.write_text(str(port))
    tmp.rename(path)


async def serve(a: argparse.Namespace) -> None:
    storm = Storm(a)
    runner = web.AppRunner(make_app(storm), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", a.port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    if a.ready_file:
        write_ready(a.ready_file, port)
    print(f"storm provider on http://127.0.0.1:{port}/v1 (rpm {a.rpm}, fail {a.fail_rate}, burst "
          f"{a.burst_seconds:g}s every {a.burst_every:g}s, seed {a.seed})", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=a.max_seconds)
    except TimeoutError:
        print(f"storm provider: --max-seconds {a.max_seconds:g} reached", file=sys.stderr, flush=True)
    await runner.cleanup()
    if storm.log_file is not None:
        storm.log_file.close()
    print(f"storm provider: stopped after {storm.count} requests", file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="0: any free port (see --ready-file)")
    p.add_argument("--rpm", type=int, default=1800, help="admitted requests per --window seconds")
    p.add_argument("--window", type=float, default=60.0, help="the RPM window, seconds (sliding)")
    p.add_argument("--fail-rate", type=float, default=0.3, help="share of admitted requests answered 500")
    p.add_argument("--burst-every", type=float, default=15.0, help="seconds between 429 bursts (0: none)")
    p.add_argument("--burst-seconds", type=float, default=2.0, help="length of a burst")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--latency-min-ms", type=float, default=20.0)
    p.add_argument("--latency-max-ms", type=float, default=50.0)
    p.add_argument("--log", default=None, help="request log, JSON lines (appended)")
    p.add_argument("--ready-file", default=None, help="written with the port once listening")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="stop by itself after this long")
    return p.parse_args(argv)


def main() -> None:
    a = parse()
    try:
        import uvloop

        uvloop.run(serve(a))
    except ImportError:
        asyncio.run(serve(a))


if __name__ == "__main__":
    main()
