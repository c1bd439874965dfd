"""A fake LLM provider on loopback that follows a fault script, for tests and the demo.

It speaks the OpenAI chat-completions dialect (``POST /v1/chat/completions``) and the
Anthropic messages dialect (``POST /v1/messages``), JSON and SSE. Each request consumes the
next step of the script (the first one whose ``model`` is unset or matches); when none is
left the ``default`` step answers (``ok`` unless set: set it to a failure to get "fail
always with X").

Every request is recorded (arrival time, the client's address and port, so one per TCP
connection; path, model, headers without the key-bearing ones, whether the key matched the
expected one, body, call key, step, status, why and outcome) and the log is served over
HTTP so that tests in other processes share one fake:

- ``GET /_fake/log``: the request log (JSON list).
- ``POST /_fake/script``: ``{"steps": [...], "default": {...}}`` (or a bare list of steps).
- ``POST /_fake/storm``: a :class:`Storm` as JSON (an empty body, ``null`` or ``{}`` ends it).
- ``POST /_fake/reset``: clears the log, the script and the storm.

**Storm mode** (:meth:`FakeProvider.storm`) is another way to set the default answer, for
load tests: the requests no script step answers meet periodic 429 bursts (every request in
a burst gets 429 with ``Retry-After`` to the burst's end), an optional requests-per-minute
limit over a true sliding window (429 with ``Retry-After`` until the oldest request leaves
it), and a seeded failure rate (500 by default); the rest get the default step. Each log
entry then says ``status``, ``why`` (``ok``, ``fail``, ``burst``, ``rpm``; ``script`` for a
step's answer, ``auth`` for a wrong key) and ``call``: the key of the call, taken from a
``call <id>`` marker in the last user message, so a test can tell which logical call a
request was for.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from cairn.llm.providers import ProviderConfig
from cairn.llm.types import ToolCall

StepKind = Literal["ok", "status", "hang", "keepalive_then_ok", "slow_stream", "drop_mid_stream",
                   "malformed_json", "missing_usage"]
_HIDDEN_HEADERS = {"authorization", "x-api-key"}
SHUTDOWN_SECONDS = 1.0  # hung handlers are cancelled, not waited for
KEEPALIVE_SECONDS = 3630.0  # an idle keep-alive connection is closed after this (aiohttp's default)
CALL_KEY = re.compile(r"\bcall (\w(?:[\w.:/-]*\w)?)")  # the marker a request's last user message may carry


class Step(BaseModel):
    """One scripted answer.

    Attributes:
        kind: what to do (see the module docstring and the helpers :func:`ok`, ...).
        model: only requests for this model consume the step (``None``: any request).
        times: how many requests the step answers before it is used up.
        text, tool_calls: the answer's content (``ok`` and the kinds that end up answering).
        input_tokens, cached_input_tokens, output_tokens: the usage reported
            (``output_tokens`` defaults to the number of streamed pieces).
        no_usage: report no usage at all.
        status, headers, body: the error answer of a ``status`` step (``body`` a JSON value
            or a string; a provider-shaped error by default).
        seconds: ``hang``: how long before answering (``None``: forever);
            ``keepalive_then_ok``: how long to send keep-alives before answering.
        interval: seconds between keep-alives.
        delay: ``slow_stream``: seconds before each piece.
        after_chunks: ``drop_mid_stream``: pieces (SSE events, or JSON halves) sent before
            the connection is closed.
        served_model: the model the answer says served it (default: the requested one).
        request_id_header: send ``x-request-id``/``request-id`` (else only the body id).
    """

    model_config = ConfigDict(extra="forbid")

    kind: StepKind = "ok"
    model: str | None = None
    times: int = Field(default=1, ge=1)
    text: str = "Hello from the fake provider."
    tool_calls: list[ToolCall] = Field(default_factory=list)
    input_tokens: int = Field(default=12, ge=0)
    cached_input_tokens: int = Field(default=0, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    no_usage: bool = False
    status: int = Field(default=500, ge=100, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    seconds: float | None = Field(default=None, ge=0)
    interval: float = Field(default=0.2, gt=0)
    delay: float = Field(default=0.05, ge=0)
    after_chunks: int = Field(default=2, ge=0)
    served_model: str | None = None
    request_id_header: bool = True


class Storm(BaseModel):
    """A provider having a bad day: what the requests no script step answers meet.

    In this order: a 429 burst, the rpm limit, the failure rate; what passes all three gets
    the default step. Times are wall-clock seconds from when the storm was set.

    Attributes:
        failure_rate: the share of requests answered ``failure_status`` (0-1), drawn from
            ``seed``: by the request's call key and how many times that key was seen
            before (the same calls fail whatever the interleaving), else in arrival order.
        failure_status: the status of those failures.
        burst_every: seconds between the starts of two 429 bursts (``None``: no bursts).
        burst_seconds: how long a burst lasts; its requests get ``Retry-After`` to its end.
        burst_first: when the first burst starts (default: ``burst_every``).
        rpm: at most this many requests answered (ok or failed) within any ``rpm_window``
            seconds, a true sliding window; above it, 429 with ``Retry-After`` until the
            oldest of them leaves the window (``None``: no limit).
        rpm_window: the sliding window's length (60 s: requests per minute).
        seed: the failure draws' seed.
    """

    model_config = ConfigDict(extra="forbid")

    failure_rate: float = Field(default=0.0, ge=0, le=1)
    failure_status: int = Field(default=500, ge=400, le=599)
    burst_every: float | None = Field(default=None, gt=0)
    burst_seconds: float = Field(default=2.0, gt=0)
    burst_first: float | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=1)
    rpm_window: float = Field(default=60.0, gt=0)
    seed: int = 0

    def burst_end(self, elapsed: float) -> float | None:
        """The end of the burst ``elapsed`` seconds after the start falls in (``None``: none)."""
        if self.burst_every is None:
            return None
        first = self.burst_every if self.burst_first is None else self.burst_first
        if elapsed < first:
            return None
        start = first + (elapsed - first) // self.burst_every * self.burst_every
        end = start + min(self.burst_seconds, self.burst_every)
        return end if elapsed < end else None


class _StormState:
    """A storm and what it has seen (kept under the provider's lock)."""

    def __init__(self, storm: Storm, started: float) -> None:
        self.storm, self.started = storm, started
        self.window: deque[float] = deque()  # arrival times of the requests the rpm limit let through
        self.seen: dict[str, int] = {}  # call key -> requests so far
        self.rng = random.Random(storm.seed)

    def fails(self, call: str | None) -> bool:
        rate = self.storm.failure_rate
        if rate <= 0:
            return False
        if call is None:
            return self.rng.random() < rate
        n = self.seen.get(call, 0)
        self.seen[call] = n + 1
        digest = hashlib.sha256(f"{self.storm.seed}:{call}:{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate

    def decide(self, now: float, call: str | None) -> tuple[str, float | None]:
        """``(why, retry_after)``: ``burst``/``rpm`` with the seconds to wait, ``fail`` or ``ok``."""
        storm = self.storm
        end = storm.burst_end(now - self.started)
        if end is not None:
            return "burst", self.started + end - now
        if storm.rpm is not None:
            while self.window and self.window[0] <= now - storm.rpm_window:
                self.window.popleft()
            if len(self.window) >= storm.rpm:
                return "rpm", self.window[len(self.window) - storm.rpm] + storm.rpm_window - now
            self.window.append(now)
        return ("fail" if self.fails(call) else "ok"), None


def call_key(body: Any) -> str | None:
    """The ``call <id>`` marker of a request's last user message, if it has one."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):  # content blocks
            content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
        found = CALL_KEY.search(str(content or ""))
        return found.group(1) if found else None
    return None


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``retry-after-ms`` (exact) and ``retry-after`` (whole seconds, rounded up)."""
    seconds = max(seconds, 0.0)
    return {"retry-after-ms": f"{seconds * 1000:.0f}", "retry-after": str(math.ceil(seconds))}


StepLike = Step | Mapping[str, Any]
StormLike = Storm | Mapping[str, Any]


# ---------------------------------------------------------------- step helpers


def ok(text: str = "Hello from the fake provider.", **options: Any) -> Step:
    """A normal answer."""
    return Step(kind="ok", text=text, **options)


def status(code: int, *, headers: Mapping[str, str] | None = None, body: Any = None, **options: Any) -> Step:
    """An error answer with this status, headers and body."""
    return Step(kind="status", status=code, headers=dict(headers or {}), body=body, **options)


def rate_limited(retry_after: str | None = None, *, header: str = "retry-after",
                 headers: Mapping[str, str] | None = None, **options: Any) -> Step:
    """A 429 rate-limit answer, with ``header: retry_after`` if given (and any other ``headers``)."""
    merged = dict(headers or {})
    if retry_after is not None:
        merged[header] = retry_after
    return status(429, headers=merged, **options)


def quota_exhausted(**options: Any) -> Step:
    """OpenAI's ``insufficient_quota`` 429 (fatal, not a throttle)."""
    body = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                      "type": "insufficient_quota", "code": "insufficient_quota"}}
    return status(429, body=body, **options)


def context_too_long(**options: Any) -> Step:
    """OpenAI's ``context_length_exceeded`` 400."""
    body = {"error": {"message": "This model's maximum context length is 128000 tokens.",
                      "type": "invalid_request_error", "code": "context_length_exceeded"}}
    return status(400, body=body, **options)


def hang(seconds: float | None = None, **options: Any) -> Step:
    """No answer (not even headers) for ``seconds``, or forever; then a normal answer."""
    return Step(kind="hang", seconds=seconds, **options)


def keepalive_then_ok(seconds: float, **options: Any) -> Step:
    """Headers at once, keep-alives (SSE comments or JSON whitespace) for ``seconds``, then the answer."""
    return Step(kind="keepalive_then_ok", seconds=seconds, **options)


def slow_stream(delay: float, **options: Any) -> Step:
    """A normal answer with ``delay`` seconds before each piece."""
    return Step(kind="slow_stream", delay=delay, **options)


def drop_mid_stream(after_chunks: int = 2, **options: Any) -> Step:
    """Closes the connection after ``after_chunks`` pieces."""
    return Step(kind="drop_mid_stream", after_chunks=after_chunks, **options)


def malformed_json(**options: Any) -> Step:
    """A 200 whose body (or stream chunk) is not valid JSON."""
    return Step(kind="malformed_json", **options)


def missing_usage(**options: Any) -> Step:
    """A normal answer that reports no usage."""
    return Step(kind="missing_usage", **options)


def parse_script(data: Any) -> tuple[list[Step], Step | None]:
    """Reads ``{"steps": [...], "default": {...}}`` or a bare list of steps."""
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict):
        raise ValueError("a script is a list of steps or {\"steps\": [...], \"default\": {...}}")
    unknown = set(data) - {"steps", "default"}
    if unknown:
        raise ValueError(f"unknown script keys: {', '.join(sorted(unknown))}")
    steps = [Step.model_validate(s) for s in data.get("steps") or []]
    default = Step.model_validate(data["default"]) if data.get("default") is not None else None
    return steps, default


# ---------------------------------------------------------------- answers


def _pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+\s*?", text) or ([text] if text else [])


def _usage_numbers(step: Step) -> tuple[int, int, int]:
    out = step.output_tokens
    if out is None:
        out = max(1, len(_pieces(step.text)) + len(step.tool_calls))
    return step.input_tokens, min(step.cached_input_tokens, step.input_tokens), out


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {text}\n\n".encode()


class _Answerer:
    """Builds one answer of a dialect: the JSON body, or the SSE frames."""

    def __init__(self, dialect: str, step: Step, model: str, seq: int, include_usage: bool) -> None:
        self.dialect, self.step, self.seq = dialect, step, seq
        self.model = step.served_model or model
        self.include_usage = include_usage and not step.no_usage and step.kind != "missing_usage"
        self.json_usage = not step.no_usage and step.kind != "missing_usage"

    @property
    def request_id(self) -> str:
        return f"req_fake_{self.seq}"

    def headers(self) -> dict[str, str]:
        if not self.step.request_id_header:
            return {}
        return {"x-request-id" if self.dialect == "openai" else "request-id": self.request_id}

    def body(self) -> dict[str, Any]:
        step = self.step
        inp, cached, out = _usage_numbers(step)
        if self.dialect == "openai":
            message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
            if step.tool_calls:
                message["tool_calls"] = [{"id": t.id, "type": "function",
                                          "function": {"name": t.name, "arguments": t.arguments}}
                                         for t in step.tool_calls]
            body: dict[str, Any] = {
                "id": f"chatcmpl-fake-{self.seq}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if step.tool_calls else "stop"}]}
            if self.json_usage:
                body["usage"] = {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out,
                                 "prompt_tokens_details": {"cached_tokens": cached}}
            return body
        content: list[dict[str, Any]] = [{"type": "text", "text": step.text}] if step.text else []
        content += [{"type": "tool_use", "id": t.id, "name": t.name, "input": json.loads(t.arguments or "{}")}
                    for t in step.tool_calls]
        body = {"id": f"msg_fake_{self.seq}", "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": "tool_use" if step.tool_calls else "end_turn",
                "stop_sequence": None}
        if self.json_usage:
            body["usage"] = {"input_tokens": inp - cached, "cache_read_input_tokens": cached,
                             "cache_creation_input_tokens": 0, "output_tokens": out}
        return body

    def frames(self) -> list[bytes]:
        """The SSE events; the "content" ones are the ones slow streams delay."""
        step = self.step
        inp, cached, out = _usage_numbers(step)
        if self.dialect == "openai":
            base = {"id": f"chatcmpl-fake-{self.seq}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": self.model}

            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

            frames = [chunk({"role": "assistant", "content": ""})]
            frames += [chunk({"content": p}) for p in _pieces(step.text)]
            for i, t in enumerate(step.tool_calls):
                frames.append(chunk({"tool_calls": [{"index": i, "id": t.id, "type": "function",
                                                     "function": {"name": t.name, "arguments": ""}}]}))
                half = len(t.arguments) // 2
                for part in (t.arguments[:half], t.arguments[half:]):
                    frames.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
            frames.append(chunk({}, "tool_calls" if step.tool_calls else "stop"))
            if self.include_usage:
                frames.append(_sse({**base, "choices": [], "usage": {
                    "prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out,
                    "prompt_tokens_details": {"cached_tokens": cached}}}))
            frames.append(_sse("[DONE]"))
            return frames
        start_usage = ({"input_tokens": inp - cached, "cache_read_input_tokens": cached,
                        "cache_creation_input_tokens": 0, "output_tokens": 1} if self.include_usage else None)
        message: dict[str, Any] = {"id": f"msg_fake_{self.seq}", "type": "message", "role": "assistant",
                                   "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None}
        if start_usage is not None:
            message["usage"] = start_usage
        frames = [_sse({"type": "message_start", "message": message}, "message_start"), _sse({"type": "ping"}, "ping")]
        index = 0
        if step.text:
            frames.append(_sse({"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}, "content_block_start"))
            frames += [_sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
                            "content_block_delta") for p in _pieces(step.text)]
            frames.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
            index = 1
        for t in step.tool_calls:
            frames.append(_sse({"type": "content_block_start", "index": index,
                                "content_block": {"type": "tool_use", "id": t.id, "name": t.name, "input": {}}},
                               "content_block_start"))
            half = len(t.arguments) // 2
            for part in (t.arguments[:half], t.arguments[half:]):
                frames.append(_sse({"type": "content_block_delta", "index": index,
                                    "delta": {"type": "input_json_delta", "partial_json": part}},
                                   "content_block_delta"))
            frames.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
            index += 1
        delta: dict[str, Any] = {"type": "message_delta",
                                 "delta": {"stop_reason": "tool_use" if step.tool_calls else "end_turn",
                                           "stop_sequence": None}}
        if self.include_usage:
            delta["usage"] = {"output_tokens": out}
        frames += [_sse(delta, "message_delta"), _sse({"type": "message_stop"}, "message_stop")]
        return frames

    def error_body(self, code: int) -> Any:
        if self.step.body is not None:
            return self.step.body
        kind = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}.get(code, "api_error")
        message = f"fake provider: HTTP {code}"
        if self.dialect == "openai":
            return {"error": {"message": message, "type": kind, "code": None}}
        return {"type": "error", "error": {"type": kind, "message": message}}


# ---------------------------------------------------------------- the server


def _peer(request: web.Request) -> str | None:
    """``host:port`` of the client's end of the request's TCP connection."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if peer else None


class FakeProvider:
    """The fake's state and its aiohttp application (runs on any event loop).

    Args:
        api_key: the key requests must carry (``Authorization: Bearer`` or ``x-api-key``);
            a wrong or missing one gets 401. ``None`` accepts any request.
        keepalive_timeout: seconds after which the server closes an idle keep-alive connection.
    """

    def __init__(self, *, api_key: str | None = None, keepalive_timeout: float = KEEPALIVE_SECONDS) -> None:
        self.api_key = api_key
        self.keepalive_timeout = keepalive_timeout
        self._lock = threading.Lock()  # the log and script are read from other threads
        self._steps: list[Step] = []
        self._default: Step = Step()
        self._storm: _StormState | None = None
        self._log: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.root = ""

    # -- the script and the log (thread-safe)

    def script(self, steps: Iterable[StepLike], default: StepLike | None = None) -> None:
        """Replaces the script; ``default`` answers once the steps are used up (``ok`` if ``None``)."""
        parsed = [s if isinstance(s, Step) else Step.model_validate(s) for s in steps]
        fallback = Step() if default is None else default if isinstance(default, Step) else Step.model_validate(default)
        with self._lock:
            self._steps = [s.model_copy() for s in parsed]
            self._default = fallback

    def storm(self, storm: StormLike | None = None, /, **options: Any) -> Storm | None:
        """Starts a storm (a :class:`Storm`, or its fields as keywords) for the requests no
        script step answers; ``storm(None)`` with no keywords ends it. Its clock starts now.

        ``fake.storm(failure_rate=0.3, burst_every=15, burst_seconds=2, rpm=None, seed=1)``
        """
        if storm is None and not options:
            with self._lock:
                self._storm = None
            return None
        parsed = storm if isinstance(storm, Storm) else Storm.model_validate({**(storm or {}), **options})
        with self._lock:
            self._storm = _StormState(parsed, time.time())
        return parsed

    def reset(self) -> None:
        """Clears the log, the script and the storm."""
        with self._lock:
            self._steps, self._default, self._log, self._storm = [], Step(), [], None

    def requests(self) -> list[dict[str, Any]]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return copy.deepcopy(self._log)

    def _take(self, model: str | None, call: str | None) -> tuple[Step, str]:
        """The step answering a request, and why (``script``, or the storm's verdict)."""
        with self._lock:
            for i, step in enumerate(self._steps):
                if step.model is None or step.model == model:
                    if step.times <= 1:
                        del self._steps[i]
                    else:
                        self._steps[i] = step.model_copy(update={"times": step.times - 1})
                    return step, "script"
            if self._storm is None:
                return self._default, "ok"
            why, wait = self._storm.decide(time.time(), call)
            if wait is not None:  # the body: the dialect's own rate_limit_error
                return status(429, headers=retry_after_headers(wait)), why
            if why == "fail":
                return status(self._storm.storm.failure_status), why
            return self._default, why

    def _note(self, record: dict[str, Any], **fields: Any) -> None:
        with self._lock:
            record.update(fields)

    # -- HTTP

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_get("/_fake/log", self._get_log)
        app.router.add_post("/_fake/script", self._post_script)
        app.router.add_post("/_fake/storm", self._post_storm)
        app.router.add_post("/_fake/reset", self._post_reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves on ``host:port`` (0: a free port); returns the root URL."""
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=SHUTDOWN_SECONDS,
                                     access_log=None, keepalive_timeout=self.keepalive_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.root = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.root

    @property
    def url(self) -> str:
        """The ``base_url`` to configure a provider with (``.../v1``)."""
        return f"{self.root}/v1"

    def open_connections(self) -> int:
        """How many client connections the server holds open now (call it on its loop)."""
        server = self._runner.server if self._runner is not None else None
        return 0 if server is None else len(server.connections)

    async def stop(self) -> None:
        """Stops serving; hung requests are cancelled."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get_log(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests())

    async def _post_script(self, request: web.Request) -> web.Response:
        try:
            steps, default = parse_script(await request.json())
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            return web.json_response({"error": str(exc)}, status=400)
        self.script(steps, default)
        return web.json_response({"steps": len(steps)})

    async def _post_storm(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            storm = self.storm((json.loads(raw) if raw.strip() else None) or None)
        except ValueError as exc:  # bad JSON, or pydantic's ValidationError
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"storm": None if storm is None else storm.model_dump()})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._chat(request, "openai")

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._chat(request, "anthropic")

    def _auth(self, request: web.Request, dialect: str) -> tuple[bool, bool | None]:
        if dialect == "openai":
            raw = request.headers.get("authorization", "")
            given = raw[len("Bearer "):] if raw.startswith("Bearer ") else None
        else:
            given = request.headers.get("x-api-key")
        present = bool(given)
        return present, (None if self.api_key is None else given == self.api_key)

    async def _chat(self, request: web.Request, dialect: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        model = body.get("model") if isinstance(body, dict) else None
        stream = bool(body.get("stream")) if isinstance(body, dict) else False
        include_usage = dialect == "anthropic" or (
            isinstance(body, dict) and bool((body.get("stream_options") or {}).get("include_usage")))
        present, auth_ok = self._auth(request, dialect)
        call = call_key(body)
        with self._lock:
            seq = len(self._log) + 1
            record: dict[str, Any] = {
                "seq": seq, "time": time.time(), "peer": _peer(request), "path": request.path, "dialect": dialect,
                "model": model, "stream": stream,
                "headers": {k.lower(): v for k, v in request.headers.items() if k.lower() not in _HIDDEN_HEADERS},
                "auth_present": present, "auth_ok": auth_ok, "body": body, "call": call,
                "step": None, "why": None, "status": None, "outcome": "pending", "finished": False}
            self._log.append(record)
        if auth_ok is False:
            self._note(record, outcome="status 401", status=401, why="auth", finished=True)
            answer = _Answerer(dialect, Step(kind="status", status=401), model or "", seq, False)
            return web.json_response(answer.error_body(401), status=401)
        step, why = self._take(model, call)
        self._note(record, step=step.kind, why=why)
        answer = _Answerer(dialect, step, model or "unknown", seq, include_usage)
        try:
            response = await self._perform(request, answer, stream, record)
        except asyncio.CancelledError:
            self._note(record, outcome=f"{record['outcome']} (client went away)")
            raise
        self._note(record, finished=True)
        return response

    async def _perform(self, request: web.Request, answer: _Answerer, stream: bool,
                       record: dict[str, Any]) -> web.StreamResponse:
        step = answer.step
        if step.kind == "status":
            self._note(record, outcome=f"status {step.status}", status=step.status)
            payload = answer.error_body(step.status)
            text = payload if isinstance(payload, str) else json.dumps(payload)
            return web.Response(status=step.status, text=text, headers=step.headers,
                                content_type="text/plain" if isinstance(payload, str) else "application/json")
        if step.kind == "hang":
            self._note(record, outcome="hang")
            if step.seconds is None:
                await asyncio.Event().wait()
            await asyncio.sleep(step.seconds or 0)
        if step.kind == "malformed_json":
            self._note(record, outcome="malformed_json", status=200)
            if stream:
                broken = b'data: {"id": "chatcmpl-fake", "choices": [\n\ndata: [DONE]\n\n'
                return web.Response(body=broken, content_type="text/event-stream", headers=answer.headers())
            return web.Response(body=b'{"id": "chatcmpl-fake", "choices": [', content_type="application/json",
                                headers=answer.headers())
        frames = answer.frames() if stream else [json.dumps(answer.body()).encode()]
        if step.kind == "drop_mid_stream" and not stream:  # two halves of the JSON body
            whole = frames[0]
            frames = [whole[: len(whole) // 2], whole[len(whole) // 2:]]
        response = web.StreamResponse(status=200, headers={
            **answer.headers(), "content-type": "text/event-stream" if stream else "application/json"})
        await response.prepare(request)
        self._note(record, status=200)
        if step.kind == "keepalive_then_ok":
            self._note(record, outcome="keepalive")
            deadline = asyncio.get_running_loop().time() + (step.seconds or 0)
            while asyncio.get_running_loop().time() < deadline:
                await response.write(b": keep-alive\n\n" if stream else b" \n")
                await asyncio.sleep(step.interval)
        for i, frame in enumerate(frames):
            if step.kind == "drop_mid_stream" and i >= step.after_chunks:
                self._note(record, outcome=f"dropped after {i} chunks")
                assert request.transport is not None
                request.transport.close()
                return response
            if step.kind == "slow_stream" and i > 0:
                await asyncio.sleep(step.delay)
            await response.write(frame)
        self._note(record, outcome="ok" if step.kind != "missing_usage" else "ok without usage")
        await response.write_eof()
        return response


# ---------------------------------------------------------------- a fake in a thread


class FakeLLM:
    """A :class:`FakeProvider` served from a background thread with its own event loop.

    Usable from sync and async tests alike (the test's own loop is never blocked by it).
    """

    def __init__(self, *, api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 keepalive_timeout: float = KEEPALIVE_SECONDS) -> None:
        self.provider = FakeProvider(api_key=api_key, keepalive_timeout=keepalive_timeout)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(host, port), name="cairn-fake-llm", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if not self.provider.root:
            raise RuntimeError("the fake LLM provider did not start in time")

    def _serve(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.provider.start(host, port))
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.provider.stop())
        self._loop.close()

    @property
    def url(self) -> str:
        """The ``base_url`` for a provider config (``http://127.0.0.1:PORT/v1``)."""
        return self.provider.url

    @property
    def root(self) -> str:
        """``http://127.0.0.1:PORT`` (the ``/_fake/...`` endpoints live here)."""
        return self.provider.root

    def script(self, steps: Iterable[StepLike], default: StepLike | None = None) -> None:
        """Loads a fault script (see :class:`Step`)."""
        self.provider.script(steps, default)

    def requests(self) -> list[dict[str, Any]]:
        """The request log."""
        return self.provider.requests()

    def storm(self, storm: StormLike | None = None, /, **options: Any) -> Storm | None:
        """Starts (or, with no arguments, ends) a storm: see :class:`Storm`."""
        return self.provider.storm(storm, **options)

    def reset(self) -> None:
        """Clears the log, the script and the storm."""
        self.provider.reset()

    def open_connections(self) -> int:
        """How many client connections the server holds open now."""

        async def count() -> int:
            return self.provider.open_connections()

        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(10)

    def expect_key(self, key: str | None) -> None:
        """Requires this key on every request (401 otherwise); the log says whether it matched."""
        self.provider.api_key = key

    def provider_config(self, name: str = "fake", *, models: Iterable[str] = ("fake-model",),
                        dialect: Literal["openai", "anthropic"] = "openai", **options: Any) -> ProviderConfig:
        """A :class:`~cairn.llm.providers.ProviderConfig` pointing at this fake."""
        return ProviderConfig(name=name, base_url=self.url, dialect=dialect, models=list(models), **options)

    def close(self) -> None:
        """Stops the server and its thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@contextlib.contextmanager
def running_fake(**options: Any) -> Iterator[FakeLLM]:
    """``with running_fake() as fake: ...`` — a :class:`FakeLLM` stopped on exit."""
    fake = FakeLLM(**options)
    try:
        yield fake
    finally:
        fake.close()
