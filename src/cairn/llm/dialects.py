"""The wire formats of LLM providers: how a chat request is written, and how a JSON or
streamed (server-sent events) answer is read, for each dialect.

- ``openai``: ``POST {base_url}/chat/completions`` — OpenAI, DeepSeek, vLLM, Ollama,
  llama.cpp, OpenRouter... JSON or SSE (``data:`` lines ending with ``[DONE]``, usage in the
  last chunk thanks to ``stream_options.include_usage``).
- ``anthropic``: ``POST {base_url}/messages`` with ``x-api-key`` and ``anthropic-version``;
  JSON or SSE (``message_start`` ... ``message_stop``).

Readers fill an :class:`Answer`; a body that is not what the dialect promises raises
:class:`Malformed`, an error reported inside a 2xx answer raises :class:`Failed`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import httpx

from cairn.llm import classify
from cairn.llm.classify import Classification
from cairn.llm.types import ToolCall, Usage

if TYPE_CHECKING:
    from cairn.llm.providers import ProviderConfig
    from cairn.llm.types import ChatRequest

__all__ = ["ANTHROPIC_DEFAULT_MAX_TOKENS", "DIALECTS", "USER_AGENT", "Answer", "Failed", "Malformed", "OnChunk"]

ANTHROPIC_DEFAULT_MAX_TOKENS = 4096  # the messages API requires max_tokens
USER_AGENT = "cairn-llm"

OnChunk = Callable[[str], Awaitable[None] | None]


class Malformed(Exception):
    """The answer is not what the dialect promises (bad JSON, missing fields)."""


class Failed(Exception):
    """A classified failure found while reading a 2xx answer (an error event in a stream)."""

    def __init__(self, classification: Classification) -> None:
        super().__init__(classification.reason)
        self.classification = classification


class Answer:
    """What a call has received so far; dialect readers fill it."""

    def __init__(self, on_chunk: OnChunk | None, clock: Callable[[], float]) -> None:
        self.on_chunk = on_chunk
        self.clock = clock
        self.text: list[str] = []
        self.tools: dict[int, dict[str, str]] = {}
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.body_id: str | None = None
        self.usage: Usage | None = None
        self.first_token_at: float | None = None
        self.on_first: Callable[[], None] = lambda: None
        self.ended = False

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = self.clock()
            self.on_first()

    async def add_text(self, text: str) -> None:
        if not text:
            return
        self.first_token()
        self.text.append(text)
        if self.on_chunk is not None:
            result = self.on_chunk(text)
            if inspect.isawaitable(result):
                await result

    def tool(self, index: int, *, id: str | None = None, name: str | None = None, arguments: str = "") -> None:
        self.first_token()
        slot = self.tools.setdefault(index, {"id": "", "name": "", "arguments": ""})
        if id:
            slot["id"] = id
        if name:
            slot["name"] = name
        slot["arguments"] += arguments

    def finish(self, reason: str | None) -> None:
        if reason:
            self.first_token()
            self.finish_reason = reason

    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(**self.tools[i]) for i in sorted(self.tools)]


async def _sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as ``(event, data)``; comments (keep-alives) are skipped."""
    buf = b""
    event = ""
    data: list[str] = []
    async for chunk in chunks:
        buf += chunk
        while (i := buf.find(b"\n")) >= 0:
            line = buf[:i].rstrip(b"\r").decode("utf-8", "replace")
            buf = buf[i + 1:]
            if not line:
                if data:
                    yield event or "message", "\n".join(data)
                event, data = "", []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
    if data:
        yield event or "message", "\n".join(data)


async def _json_body(response: httpx.Response, answer: Answer) -> Any:
    """The whole JSON body; its first non-whitespace byte is the first token (keep-alive
    whitespace that some providers send before a JSON answer does not count)."""
    parts: list[bytes] = []
    async for chunk in response.aiter_bytes():
        if answer.first_token_at is None and chunk.strip():
            answer.first_token()
        parts.append(chunk)
    try:
        return json.loads(b"".join(parts))
    except ValueError:
        raise Malformed("JSON body") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json_obj(data: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        raise Malformed("stream chunk") from None
    if not isinstance(obj, dict):
        raise Malformed("stream chunk")
    return obj


# ---------------------------------------------------------------- openai dialect


def _openai_usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    prompt, output = _int(u.get("prompt_tokens")), _int(u.get("completion_tokens"))
    if prompt is None or output is None:
        return None
    details = u.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
    if cached is None:
        cached = _int(u.get("prompt_cache_hit_tokens"))  # DeepSeek's name for it
    return Usage(input_tokens=prompt, cached_input_tokens=cached or 0, output_tokens=output)


def _openai_request(provider: ProviderConfig, request: ChatRequest, key: str | None,
                    stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
    body: dict[str, Any] = {"model": request.model, "messages": request.messages}
    for field in ("max_tokens", "temperature", "tools", "tool_choice", "response_format", "stop"):
        value = getattr(request, field)
        if value is not None:
            body[field] = value
    headers = {"content-type": "application/json", "user-agent": USER_AGENT,
               "accept": "text/event-stream" if stream else "application/json"}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return f"{provider.base_url}/chat/completions", headers, body


async def _openai_json(response: httpx.Response, answer: Answer) -> None:
    data = await _json_body(response, answer)
    if not isinstance(data, dict):
        raise Malformed("JSON body")
    if "choices" not in data and "error" in data:  # some proxies answer 200 with an error object
        raise Failed(classify.classify_status(500, {}, json.dumps(data)))
    try:
        choice = data["choices"][0]
        message = choice["message"]
        await answer.add_text(message.get("content") or "")
        for i, call in enumerate(message.get("tool_calls") or []):
            fn = call["function"]
            answer.tool(i, id=call.get("id") or f"call_{i}", name=fn["name"], arguments=fn.get("arguments") or "")
        answer.finish(choice.get("finish_reason"))
    except (KeyError, IndexError, TypeError, AttributeError):
        raise Malformed("chat completion") from None
    answer.model = data.get("model") if isinstance(data.get("model"), str) else None
    answer.body_id = data.get("id") if isinstance(data.get("id"), str) else None
    answer.usage = _openai_usage(data.get("usage"))
    answer.ended = True


async def _openai_stream(chunks: AsyncIterator[bytes], answer: Answer) -> None:
    async for _, data in _sse(chunks):
        if data.strip() == "[DONE]":
            answer.ended = True
            return
        chunk = _json_obj(data)
        if "error" in chunk and "choices" not in chunk:
            raise Failed(classify.classify_status(500, {}, data))
        if isinstance(chunk.get("model"), str):
            answer.model = chunk["model"]
        if isinstance(chunk.get("id"), str):
            answer.body_id = chunk["id"]
        if chunk.get("usage") is not None:
            answer.usage = _openai_usage(chunk["usage"])
        try:
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    answer.first_token()  # a reasoning model is producing tokens: it is alive
                await answer.add_text(delta.get("content") or "")
                for call in delta.get("tool_calls") or []:
                    fn = call.get("function") or {}
                    answer.tool(int(call.get("index", 0)), id=call.get("id"), name=fn.get("name"),
                                arguments=fn.get("arguments") or "")
                answer.finish(choice.get("finish_reason"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise Malformed("stream chunk") from None


# ---------------------------------------------------------------- anthropic dialect


def _anthropic_messages(messages: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """OpenAI-shaped messages as Anthropic's: system apart, tool results as user blocks."""
    system: list[Any] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            system.append(m.get("content", ""))
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""), "content": m.get("content", "")}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif role == "assistant" and m.get("tool_calls"):
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m["content"]}] if m.get("content") else []
            for call in m["tool_calls"]:
                fn = call.get("function", {})
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    args = {}
                blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": fn.get("name", ""),
                               "input": args})
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content")})
    if all(isinstance(s, str) for s in system):
        return ("\n\n".join(system) or None), out
    return [b for s in system for b in (s if isinstance(s, list) else [{"type": "text", "text": s}])], out


def _anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        if t.get("type") == "function" and "function" in t:
            fn = t["function"]
            out.append({"name": fn["name"], "description": fn.get("description", ""),
                        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}})
        else:
            out.append(t)
    return out


def _anthropic_tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(choice, str):
        return {"type": {"required": "any"}.get(choice, choice)}
    if choice.get("type") == "function":
        return {"type": "tool", "name": choice.get("function", {}).get("name", "")}
    return choice


def _anthropic_request(provider: ProviderConfig, request: ChatRequest, key: str | None,
                       stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
    system, messages = _anthropic_messages(request.messages)
    body: dict[str, Any] = {"model": request.model, "messages": messages,
                            "max_tokens": request.max_tokens or ANTHROPIC_DEFAULT_MAX_TOKENS}
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.tools:
        body["tools"] = _anthropic_tools(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = _anthropic_tool_choice(request.tool_choice)
    if stream:
        body["stream"] = True
    headers = {"content-type": "application/json", "user-agent": USER_AGENT,
               "anthropic-version": provider.anthropic_version,
               "accept": "text/event-stream" if stream else "application/json"}
    if key:
        headers["x-api-key"] = key
    return f"{provider.base_url}/messages", headers, body


def _anthropic_usage(u: Any, output: int | None = None) -> Usage | None:
    if not isinstance(u, dict):
        return None
    base, out = _int(u.get("input_tokens")), output if output is not None else _int(u.get("output_tokens"))
    if base is None or out is None:
        return None
    read = _int(u.get("cache_read_input_tokens")) or 0
    written = _int(u.get("cache_creation_input_tokens")) or 0
    return Usage(input_tokens=base + read + written, cached_input_tokens=read, output_tokens=out)


async def _anthropic_json(response: httpx.Response, answer: Answer) -> None:
    data = await _json_body(response, answer)
    if not isinstance(data, dict):
        raise Malformed("JSON body")
    if data.get("type") == "error":
        err = data.get("error") or {}
        raise Failed(classify.classify_stream_error(str(err.get("type", "")), str(err.get("message", ""))))
    try:
        for i, block in enumerate(data["content"]):
            if block["type"] == "text":
                await answer.add_text(block["text"])
            elif block["type"] == "tool_use":
                answer.tool(i, id=block["id"], name=block["name"], arguments=json.dumps(block.get("input", {})))
    except (KeyError, TypeError):
        raise Malformed("message") from None
    answer.finish(data.get("stop_reason"))
    answer.model = data.get("model") if isinstance(data.get("model"), str) else None
    answer.body_id = data.get("id") if isinstance(data.get("id"), str) else None
    answer.usage = _anthropic_usage(data.get("usage"))
    answer.ended = True


async def _anthropic_stream(chunks: AsyncIterator[bytes], answer: Answer) -> None:
    start_usage: Any = None
    output_tokens: int | None = None
    try:
        async for event, data in _sse(chunks):
            obj = _json_obj(data)
            kind = obj.get("type", event)
            if kind == "message_start":
                message = obj["message"]
                answer.model = message.get("model")
                answer.body_id = message.get("id")
                start_usage = message.get("usage")
            elif kind == "content_block_start":
                block = obj["content_block"]
                if block.get("type") == "tool_use":
                    answer.tool(int(obj["index"]), id=block.get("id"), name=block.get("name"))
                elif block.get("type") == "text" and block.get("text"):
                    await answer.add_text(block["text"])
            elif kind == "content_block_delta":
                delta = obj["delta"]
                if delta.get("type") == "text_delta":
                    await answer.add_text(delta.get("text", ""))
                elif delta.get("type") == "input_json_delta":
                    answer.tool(int(obj["index"]), arguments=delta.get("partial_json", ""))
                elif delta.get("type") == "thinking_delta":
                    answer.first_token()
            elif kind == "message_delta":
                answer.finish((obj.get("delta") or {}).get("stop_reason"))
                usage = obj.get("usage") or {}
                output_tokens = _int(usage.get("output_tokens")) if isinstance(usage, dict) else None
            elif kind == "message_stop":
                answer.ended = True
                break
            elif kind == "error":
                err = obj.get("error") or {}
                raise Failed(classify.classify_stream_error(str(err.get("type", "")), str(err.get("message", ""))))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise Malformed("stream event") from None
    answer.usage = _anthropic_usage(start_usage, output_tokens)


_Prepare: TypeAlias = ("Callable[[ProviderConfig, ChatRequest, str | None, bool], "
                       "tuple[str, dict[str, str], dict[str, Any]]]")
_JsonReader = Callable[[httpx.Response, Answer], Awaitable[None]]
_StreamReader = Callable[[AsyncIterator[bytes], Answer], Awaitable[None]]
# Per dialect: the request (URL, headers, body), the reader of a JSON answer, the reader of a stream.
DIALECTS: dict[str, tuple[_Prepare, _JsonReader, _StreamReader]] = {
    "openai": (_openai_request, _openai_json, _openai_stream),
    "anthropic": (_anthropic_request, _anthropic_json, _anthropic_stream),
}
