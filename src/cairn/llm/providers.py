"""LLM providers: their configuration and the HTTP dialects that talk to them.

Two dialects, both over one ``httpx.AsyncClient`` per event loop, whose connections every
call on that loop reuses (keep-alive), with no retries (the engine is the only retry loop):

- ``openai``: ``POST {base_url}/chat/completions`` — OpenAI, DeepSeek, vLLM, Ollama,
  llama.cpp, OpenRouter... JSON or SSE (``data:`` lines ending with ``[DONE]``, usage in the
  last chunk thanks to ``stream_options.include_usage``).
- ``anthropic``: ``POST {base_url}/messages`` with ``x-api-key`` and ``anthropic-version``;
  JSON or SSE (``message_start`` ... ``message_stop``).

``base_url`` is the URL up to and including the API version (``https://api.openai.com/v1``,
``https://api.deepseek.com/v1``, ``http://localhost:11434/v1``, ``https://api.anthropic.com/v1``).

The API key is read from ``os.environ[provider.api_key_env]`` inside :func:`call_chat`, put
in one request header, and kept nowhere: not in configs, errors, logs or results.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import re
import ssl
import tomllib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cairn.breakers import BreakerConfig
from cairn.errors import CairnError, ConfigurationError, InputValidationError
from cairn.llm import classify
from cairn.llm.classify import Classification, ErrorKind
from cairn.llm.pricing import Price, cost
from cairn.llm.types import ChatRequest, Completion, ToolCall, Usage
from cairn.redaction import redact, remember

__all__ = [
    "ENV_PROVIDERS",
    "ProviderConfig",
    "ProviderConfigError",
    "ProviderError",
    "call_chat",
    "close_connections",
    "configure_providers",
    "configured_providers",
    "get_provider",
    "load_providers",
    "parse_providers",
    "provider_for",
    "providers_from_env",
    "resolve_provider",
]

log = logging.getLogger("cairn.llm")

ENV_PROVIDERS = "CAIRN_LLM_PROVIDERS"  # path of a providers file, read when none are configured
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_DEFAULT_MAX_TOKENS = 4096  # the messages API requires max_tokens
ERROR_BODY_BYTES = 16_384  # enough for any provider's error JSON; we keep a short excerpt anyway
USER_AGENT = "cairn-llm"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Field names under which people paste keys, and prefixes of well-known key formats.
_SECRET_FIELDS = {"api_key", "apikey", "key", "token", "secret", "authorization", "password", "bearer"}
_KEYLIKE = re.compile(r"^\s*(?:Bearer\s|(?:sk|pk|rk)[-_]|sk-ant-|xai-|gsk_|AIza)", re.IGNORECASE)


class ProviderError(CairnError):
    """A provider call failed; ``kind`` says what the engine should do about it.

    Attributes:
        kind: ``throttle`` | ``retryable`` | ``fatal`` | ``non_retryable`` (see classify.py).
        reason: a short code (``rate_limit``, ``quota``, ``ttft``, ``http_500``, ...).
        status: the HTTP status, if an answer came.
        retry_after: seconds the provider asked to wait (>= 0), if it said.
        provider: the provider's configured name.
        model: the requested model.
        message: a short, sanitized description (never a key, never request headers).
    """

    def __init__(self, kind: ErrorKind, message: str, *, provider: str, model: str, status: int | None = None,
                 retry_after: float | None = None, reason: str = "") -> None:
        self.kind: ErrorKind = kind
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.provider = provider
        self.model = model
        self.message = message = redact(message)  # a provider may echo the key presented
        facts = [f"HTTP {status}"] if status is not None else []
        if retry_after is not None:
            facts.append(f"retry after {retry_after:g} s")
        where = f" ({', '.join(facts)})" if facts else ""
        super().__init__(f"{provider}/{model}: {kind}{where}: {message}")

    @classmethod
    def from_classification(cls, c: Classification, *, provider: str, model: str,
                            status: int | None = None) -> ProviderError:
        """Builds the error a :class:`~cairn.llm.classify.Classification` describes."""
        return cls(c.kind, c.message or c.reason, provider=provider, model=model, status=status,
                   retry_after=c.retry_after, reason=c.reason)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments: the default pickling would lose them (process pools, logs).
        return (_rebuild_error, (self.kind, self.message, self.provider, self.model, self.status,
                                 self.retry_after, self.reason))


def _rebuild_error(kind: ErrorKind, message: str, provider: str, model: str, status: int | None,
                   retry_after: float | None, reason: str) -> ProviderError:
    return ProviderError(kind, message, provider=provider, model=model, status=status,
                         retry_after=retry_after, reason=reason)


class ProviderConfigError(ConfigurationError, InputValidationError):
    """A providers file (or inline JSON) that cannot be used: bad input, so the CLI exits 2."""


class ProviderConfig(BaseModel):
    """One provider (an account at one endpoint), configured by name.

    Attributes:
        name: what requests and breakers call it (``deepseek``, ``openai``, ``local``).
        base_url: the API root including its version (``https://api.deepseek.com/v1``).
        api_key_env: the NAME of the environment variable holding the key (never the key);
            ``None`` for servers that need none (Ollama, llama.cpp).
        dialect: ``openai`` (chat completions) or ``anthropic`` (messages).
        models: model names this provider serves (for :func:`provider_for`).
        timeout: seconds for the whole call, streaming included.
        connect_timeout: seconds to connect.
        read_timeout: seconds of silence (no byte at all) tolerated while reading.
        ttft_timeout: seconds to the first token (see :func:`call_chat`); ``None``: no limit.
        rpm, tpm, max_concurrency: fleet limits per deployment (enforced by the rate limiter).
        rate_window_seconds: the window rpm and tpm count over.
        rate_enforcement: how the provider enforces rpm: ``even`` (default) when it may
            enforce a minute's limit over shorter periods (OpenAI's guide: 60,000 RPM may be
            enforced as 1,000 a second), so requests are paced at most 1.5x the even rate
            per second; ``sliding`` when it counts over its whole sliding window only, so an
            empty window may be spent at once.
        rate_counts_throttled: whether the provider counts a request it answers 429 toward
            its limit (OpenAI: unsuccessful requests count; the default); ``False`` gives
            such a request's reservation back.
        breaker: circuit-breaker settings (a ``BreakerConfig`` as a dict), ``None`` for none.
        prices: per-model price overrides, USD per million tokens.
        context_windows: per-model context windows in tokens (for fallback on context length).
        anthropic_version: the ``anthropic-version`` header (anthropic dialect).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=100)
    base_url: str
    api_key_env: str | None = None
    dialect: Literal["openai", "anthropic"] = "openai"
    models: list[str] = Field(default_factory=list)
    timeout: float = Field(default=600.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=120.0, gt=0)
    ttft_timeout: float | None = Field(default=None, gt=0)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)
    # The window rpm and tpm are counted over: a minute, as their names say; shorter in
    # tests and for providers that enforce per-second limits.
    rate_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    rate_enforcement: Literal["even", "sliding"] = "even"
    rate_counts_throttled: bool = True
    # The circuit breaker of each of this provider's models (one breaker per
    # provider:model:endpoint); None: the defaults of BreakerConfig.
    breaker: BreakerConfig | None = None
    prices: dict[str, Price] = Field(default_factory=dict)
    # Context windows in tokens, by model: a fallback chain moves on at once from a model
    # that rejects a prompt as too long to a later one with a larger window.
    context_windows: dict[str, int] = Field(default_factory=dict)
    anthropic_version: str = ANTHROPIC_VERSION

    @model_validator(mode="before")
    @classmethod
    def _refuse_literal_keys(cls, data: Any) -> Any:
        # Raised as InputValidationError (not ValueError) so pydantic does not wrap it with
        # the input, which would echo the key we are refusing.
        if not isinstance(data, dict):
            return data
        name = data.get("name", "?")
        for field, value in data.items():
            if str(field).lower() in _SECRET_FIELDS:
                raise InputValidationError(
                    f"provider {name!r}: the config has a literal {field!r}; put the key in an environment "
                    "variable and give its NAME as api_key_env (e.g. api_key_env = \"DEEPSEEK_API_KEY\")")
            if field not in cls.model_fields:
                raise InputValidationError(f"provider {name!r}: unknown setting {field!r} "
                                           f"(known: {', '.join(cls.model_fields)})")
            if isinstance(value, str) and _KEYLIKE.match(value):
                raise InputValidationError(
                    f"provider {name!r}: {field!r} looks like an API key; the config must name the "
                    "environment variable that holds the key (api_key_env), never the key itself")
        return data

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise InputValidationError(
                "api_key_env must be the NAME of an environment variable (letters, digits and _, "
                "like OPENAI_API_KEY), not a key")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")


# ---------------------------------------------------------------- the registry

_registry: list[ProviderConfig] | None = None


def configure_providers(providers: list[ProviderConfig]) -> None:
    """Sets the process-wide providers (replacing any earlier ones).

    Raises:
        InputValidationError: two providers share a name.
    """
    global _registry
    names = [p.name for p in providers]
    _remember_keys(providers)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputValidationError(f"provider names must be unique: {', '.join(dupes)} repeated")
    _registry = list(providers)


def configured_providers() -> list[ProviderConfig]:
    """The configured providers; if none were, those of the file named by ``CAIRN_LLM_PROVIDERS``."""
    global _registry
    if _registry is None:
        path = os.environ.get(ENV_PROVIDERS)
        if not path:
            return []
        _registry = providers_from_env(path)
        _remember_keys(_registry)
    return list(_registry)


def _remember_keys(providers: list[ProviderConfig]) -> None:
    """Masks the providers' key values in error text (see :mod:`cairn.redaction`)."""
    for p in providers:
        if p.api_key_env is not None:
            remember(os.environ.get(p.api_key_env))


def get_provider(name: str) -> ProviderConfig:
    """The provider called ``name``.

    Raises:
        ConfigurationError: no such provider (the message lists the known ones).
    """
    providers = configured_providers()
    for p in providers:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in providers) or f"none (call configure_providers or set {ENV_PROVIDERS})"
    raise ConfigurationError(f"no LLM provider named {name!r}; known providers: {known}")


def provider_for(model: str) -> ProviderConfig:
    """The first configured provider that lists ``model`` in its ``models``.

    Raises:
        ConfigurationError: no provider serves it (the message lists the known models).
    """
    providers = configured_providers()
    for p in providers:
        if model in p.models:
            return p
    known = "; ".join(f"{p.name}: {', '.join(p.models) or '(no models listed)'}" for p in providers)
    raise ConfigurationError(
        f"no LLM provider serves model {model!r}; known models: "
        f"{known or f'none (call configure_providers or set {ENV_PROVIDERS})'}")


def resolve_provider(request: ChatRequest) -> ProviderConfig:
    """The provider a request names, else the one serving its model."""
    return get_provider(request.provider) if request.provider else provider_for(request.model)


def load_providers(path: str | os.PathLike[str]) -> list[ProviderConfig]:
    """Reads providers from a TOML or JSON file.

    Either ``[[providers]]`` tables / ``{"providers": [...]}``, or providers keyed by name
    (``[providers.deepseek]`` / ``{"providers": {"deepseek": {...}}}``); JSON may be a bare list.

    Raises:
        ProviderConfigError: (a ConfigurationError and an InputValidationError) unreadable
            file, bad syntax, or a bad provider (the message says which and why, and never
            repeats a value that looks like a key).
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProviderConfigError(f"LLM provider config {str(p)!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProviderConfigError(f"cannot read LLM provider config {str(p)!r}: {exc}") from None
    return parse_providers(raw, str(p), fmt=p.suffix.lower().lstrip(".") or None)


def providers_from_env(value: str) -> list[ProviderConfig]:
    """The providers ``CAIRN_LLM_PROVIDERS`` gives: a file's path, or the providers
    themselves as inline JSON (a value starting with ``{`` or ``[``).

    Raises:
        ProviderConfigError: as :func:`load_providers`.
    """
    if value.lstrip()[:1] in ("{", "["):
        return parse_providers(value, f"{ENV_PROVIDERS} (inline JSON)", fmt="json")
    if not Path(value).exists():
        raise ProviderConfigError(
            f"{ENV_PROVIDERS} names a providers file that does not exist: {value[:200]!r} (it takes a "
            "TOML or JSON file's path, or the providers as inline JSON starting with { or [)")
    return load_providers(value)


def parse_providers(raw: str, label: str, *, fmt: str | None = None) -> list[ProviderConfig]:
    """Providers from TOML or JSON text (``fmt`` "json" or "toml"; else guessed from the
    first character); ``label`` names the source in errors.

    Raises:
        ProviderConfigError: as :func:`load_providers`.
    """
    p = label
    data: Any
    if fmt == "json" or (fmt != "toml" and raw.lstrip()[:1] in ("{", "[")):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ProviderConfigError(f"{p}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    else:
        try:
            data = tomllib.loads(raw)
        except tomllib.TOMLDecodeError as exc:
            raise ProviderConfigError(f"{p}: not valid TOML: {exc}") from None
    entries = data.get("providers", None) if isinstance(data, dict) else data
    if isinstance(entries, dict):
        entries = [{"name": name, **body} if isinstance(body, dict) else body for name, body in entries.items()]
    if not isinstance(entries, list):
        raise ProviderConfigError(f"{p}: expected a 'providers' list or table")
    out: list[ProviderConfig] = []
    for i, entry in enumerate(entries):
        label = f"provider #{i + 1}" + (f" ({entry.get('name')!r})" if isinstance(entry, dict) else "")
        try:
            out.append(ProviderConfig.model_validate(entry))
        except InputValidationError as exc:
            raise ProviderConfigError(f"{p}: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                                 for e in exc.errors(include_input=False, include_url=False))
            raise ProviderConfigError(f"{p}: {label}: {problems}") from None
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ProviderConfigError(f"{p}: provider names must be unique")
    return out


# ---------------------------------------------------------------- one call

OnChunk = Callable[[str], Awaitable[None] | None]


class _Malformed(Exception):
    """The answer is not what the dialect promises (bad JSON, missing fields)."""


class _Failed(Exception):
    """A classified failure found while reading a 2xx answer (an error event in a stream)."""

    def __init__(self, classification: Classification) -> None:
        super().__init__(classification.reason)
        self.classification = classification


class _Answer:
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


async def _json_body(response: httpx.Response, answer: _Answer) -> Any:
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
        raise _Malformed("JSON body") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json_obj(data: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        raise _Malformed("stream chunk") from None
    if not isinstance(obj, dict):
        raise _Malformed("stream chunk")
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


def _openai_prepare(provider: ProviderConfig, request: ChatRequest, key: str | None,
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


async def _openai_json(response: httpx.Response, answer: _Answer) -> None:
    data = await _json_body(response, answer)
    if not isinstance(data, dict):
        raise _Malformed("JSON body")
    if "choices" not in data and "error" in data:  # some proxies answer 200 with an error object
        raise _Failed(classify.classify_status(500, {}, json.dumps(data)))
    try:
        choice = data["choices"][0]
        message = choice["message"]
        await answer.add_text(message.get("content") or "")
        for i, call in enumerate(message.get("tool_calls") or []):
            fn = call["function"]
            answer.tool(i, id=call.get("id") or f"call_{i}", name=fn["name"], arguments=fn.get("arguments") or "")
        answer.finish(choice.get("finish_reason"))
    except (KeyError, IndexError, TypeError, AttributeError):
        raise _Malformed("chat completion") from None
    answer.model = data.get("model") if isinstance(data.get("model"), str) else None
    answer.body_id = data.get("id") if isinstance(data.get("id"), str) else None
    answer.usage = _openai_usage(data.get("usage"))
    answer.ended = True


async def _openai_stream(chunks: AsyncIterator[bytes], answer: _Answer) -> None:
    async for _, data in _sse(chunks):
        if data.strip() == "[DONE]":
            answer.ended = True
            return
        chunk = _json_obj(data)
        if "error" in chunk and "choices" not in chunk:
            raise _Failed(classify.classify_status(500, {}, data))
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
            raise _Malformed("stream chunk") from None


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


def _anthropic_prepare(provider: ProviderConfig, request: ChatRequest, key: str | None,
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


async def _anthropic_json(response: httpx.Response, answer: _Answer) -> None:
    data = await _json_body(response, answer)
    if not isinstance(data, dict):
        raise _Malformed("JSON body")
    if data.get("type") == "error":
        err = data.get("error") or {}
        raise _Failed(classify.classify_stream_error(str(err.get("type", "")), str(err.get("message", ""))))
    try:
        for i, block in enumerate(data["content"]):
            if block["type"] == "text":
                await answer.add_text(block["text"])
            elif block["type"] == "tool_use":
                answer.tool(i, id=block["id"], name=block["name"], arguments=json.dumps(block.get("input", {})))
    except (KeyError, TypeError):
        raise _Malformed("message") from None
    answer.finish(data.get("stop_reason"))
    answer.model = data.get("model") if isinstance(data.get("model"), str) else None
    answer.body_id = data.get("id") if isinstance(data.get("id"), str) else None
    answer.usage = _anthropic_usage(data.get("usage"))
    answer.ended = True


async def _anthropic_stream(chunks: AsyncIterator[bytes], answer: _Answer) -> None:
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
                raise _Failed(classify.classify_stream_error(str(err.get("type", "")), str(err.get("message", ""))))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _Malformed("stream event") from None
    answer.usage = _anthropic_usage(start_usage, output_tokens)


_Prepare = Callable[[ProviderConfig, ChatRequest, "str | None", bool], tuple[str, dict[str, str], dict[str, Any]]]
_JsonReader = Callable[[httpx.Response, _Answer], Awaitable[None]]
_StreamReader = Callable[[AsyncIterator[bytes], _Answer], Awaitable[None]]
_DIALECTS: dict[str, tuple[_Prepare, _JsonReader, _StreamReader]] = {
    "openai": (_openai_prepare, _openai_json, _openai_stream),
    "anthropic": (_anthropic_prepare, _anthropic_json, _anthropic_stream),
}


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Reads what is left of a stream after its end marker (the final empty chunk), so
    the connection goes back to the pool: a body left unread closes it."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(STREAM_END_SECONDS):
            async for _ in chunks:
                pass


async def _error_body(response: httpx.Response) -> str:
    out = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            out += chunk
            if len(out) >= ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass  # the status says enough
    return out[:ERROR_BODY_BYTES].decode("utf-8", "replace")


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context of every call, made once: building one loads the CA bundle, and per
    call that was half of a worker's CPU under load (py-spy, bench LLM: 52 % of samples in
    ``ssl.create_default_context``; the worker sent ~35 calls a second). A context is safe
    to share between connections, threads and event loops."""
    return httpx.create_ssl_context()


# ---------------------------------------------------------------- connections

# Idle connections kept per event loop. A worker runs up to activity_concurrency calls at
# once (100 by default) and after a wave of them holds that many idle connections; the next
# wave reuses them instead of paying a TCP and TLS handshake each. No cap on connections in
# use: the worker's concurrency and the fleet limits bound the calls in flight, and a cap
# here would make calls wait for a connection (PoolTimeout), which they never did.
KEEPALIVE_CONNECTIONS = 100
# How long an idle connection is kept: less than servers' own idle timeouts (uvicorn's 5 s,
# so vLLM's and many FastAPI gateways'; nginx's 75 s), so we give a connection up before the
# server does rather than race its close with a request. One the server closed anyway is
# readable while idle, and httpcore discards it before reuse (test_llm_connections.py).
KEEPALIVE_EXPIRY_SECONDS = 4.0
# Seconds to wait for the end of a stream's body after its end marker: it comes with the
# marker or just after it. A server that keeps the stream open past this only loses us the
# connection (closed, not reused), never the answer.
STREAM_END_SECONDS = 0.5
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                       keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS)
# Calls stay as independent as they were with a client each: a cookie a provider sets (a
# CDN's bot-management cookie) is not stored, so not sent back with the next call.
_NO_COOKIES = DefaultCookiePolicy(allowed_domains=[])


class _LoopClient:
    """The HTTP client of one event loop, shared by the calls made on it.

    A client's connections belong to the loop that opened them, hence one per loop (a
    worker's; each loop a test or script runs). It holds no key: keys go in each request's
    headers only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.client = httpx.AsyncClient(
            follow_redirects=False, cookies=CookieJar(_NO_COOKIES),
            transport=httpx.AsyncHTTPTransport(retries=0, verify=_tls(), limits=_LIMITS))
        self.calls = 0  # calls using it now
        self.retired = False  # close_connections() was called: close once the last call ends
        self.closer = self._closed_with(loop)

    async def _closed_with(self, loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
        # Started once and left suspended: loop.shutdown_asyncgens() (asyncio.run, uvloop.run,
        # asyncio.Runner, pytest-asyncio) closes every suspended async generator of the loop,
        # so the client is closed with its loop even if nobody calls close_connections().
        try:
            yield
        finally:
            if _clients.get(loop) is self:
                del _clients[loop]
            await self.client.aclose()


_clients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}


@contextlib.asynccontextmanager
async def _client() -> AsyncIterator[httpx.AsyncClient]:
    """The running loop's client (made on first use), held for one call."""
    loop = asyncio.get_running_loop()
    shared = _clients.get(loop)
    if shared is None:
        shared = _clients[loop] = _LoopClient(loop)
        await anext(shared.closer)  # registers it with the loop (see _closed_with)
    shared.calls += 1
    try:
        yield shared.client
    finally:
        shared.calls -= 1
        if shared.retired and not shared.calls:
            await shared.closer.aclose()


async def close_connections() -> None:
    """Closes the running loop's connections to providers; the worker calls it as it stops.

    Calls in flight finish first (another worker on the same loop may be making some), and
    the next call opens a new client. Without it the client is closed when its loop shuts
    down (``asyncio.run``, ``uvloop.run``, ``asyncio.Runner``).
    """
    shared = _clients.pop(asyncio.get_running_loop(), None)
    if shared is not None:
        shared.retired = True
        if not shared.calls:
            await shared.closer.aclose()


async def call_chat(provider: ProviderConfig, request: ChatRequest, *, on_chunk: OnChunk | None = None,
                    validate: Callable[[Completion], bool] | None = None) -> Completion:
    """Makes one chat call; never retries, never sleeps.

    The call reuses an idle connection of the running loop's client when one is open to
    the provider (see :func:`close_connections`).

    Streams when ``request.stream`` is set or ``on_chunk`` is given (``on_chunk`` gets each
    text delta, sync or async). Deadlines: ``connect_timeout``; ``read_timeout`` of
    silence; ``ttft_timeout`` from the start of the call to the first token — the first
    content delta (text, tool-call fragment, reasoning delta or finish reason) of a stream,
    or the first non-whitespace byte of a JSON body, so keep-alive comments and whitespace
    do not count; ``timeout`` for the whole call.

    Args:
        provider: where to send it.
        request: what to ask.
        on_chunk: called with each text delta as it arrives.
        validate: a predicate on the completion; ``False`` makes the call fail as
            ``retryable`` (reason ``invalid_output``).

    Returns:
        The completion; ``usage`` is ``None`` (and so is cost) when the provider sent none.

    Raises:
        ProviderError: classified (see :mod:`cairn.llm.classify`); its message carries the
            provider, model, status and a short sanitized excerpt, never the key.
    """
    model = request.model

    def failure(c: Classification, status: int | None = None) -> ProviderError:
        return ProviderError.from_classification(c, provider=provider.name, model=model, status=status)

    key: str | None = None
    if provider.api_key_env is not None:
        key = os.environ.get(provider.api_key_env) or None
        remember(key)  # masked in every error text from now on
        if key is None:
            raise ProviderError("non_retryable", f"environment variable {provider.api_key_env} is not set",
                                provider=provider.name, model=model, reason="no_key")
    stream = request.stream or on_chunk is not None
    prepare, read_json, read_stream = _DIALECTS[provider.dialect]
    if provider.dialect == "anthropic" and request.response_format is not None:
        raise ProviderError("non_retryable", "the anthropic dialect has no response_format",
                            provider=provider.name, model=model, reason="unsupported")
    url, headers, body = prepare(provider, request, key, stream)
    del key  # from here on only the headers dict holds it, and it dies with this call

    loop = asyncio.get_running_loop()
    started = loop.time()
    total_deadline = started + provider.timeout
    ttft_deadline = started + provider.ttft_timeout if provider.ttft_timeout is not None else None
    answer = _Answer(on_chunk, loop.time)
    request_id: str | None = None
    error: ProviderError | None = None
    timeouts = httpx.Timeout(connect=provider.connect_timeout, read=provider.read_timeout,
                             write=provider.read_timeout, pool=provider.connect_timeout)
    try:
        # One deadline: the TTFT limit until the first token arrives, then the total one.
        async with asyncio.timeout_at(min(total_deadline, ttft_deadline or total_deadline)) as deadline:
            answer.on_first = lambda: deadline.reschedule(total_deadline)
            async with (
                _client() as client,
                client.stream("POST", url, headers=headers, json=body, timeout=timeouts) as response,
            ):
                if not 200 <= response.status_code < 300:
                    text = await _error_body(response)
                    error = failure(classify.classify_status(response.status_code, response.headers, text),
                                    response.status_code)
                else:
                    request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
                    if not stream:
                        await read_json(response, answer)
                    else:
                        chunks = response.aiter_bytes()
                        await read_stream(chunks, answer)
                        if answer.ended:  # the answer is whole: no deadline but the drain's own
                            deadline.reschedule(None)
                            await _drain(chunks)
                    if not answer.ended:
                        error = failure(classify.truncated_stream())
    except TimeoutError:
        if answer.first_token_at is None and ttft_deadline is not None and ttft_deadline < total_deadline:
            error = failure(classify.ttft_exceeded(ttft_deadline - started))
        else:
            error = failure(classify.total_timeout(provider.timeout))
    except httpx.TransportError as exc:
        error = failure(classify.classify_transport(exc))
    except _Malformed as exc:
        error = failure(classify.malformed_body(str(exc)))
    except _Failed as exc:
        error = failure(exc.classification)
    del headers
    duration = loop.time() - started
    if error is not None:
        # Raised outside the except blocks: no chained httpx exception (which holds the
        # request and so its headers) travels with it.
        log.debug("llm call %s/%s failed after %.3f s: %s", provider.name, model, duration, error)
        raise error
    served = answer.model or model
    usage = answer.usage
    if usage is not None:
        price = cost(usage, served, provider)
        usage = usage.model_copy(update={"cost_usd": price if price is not None else cost(usage, model, provider)})
    completion = Completion(
        text="".join(answer.text), tool_calls=answer.tool_calls(), finish_reason=answer.finish_reason,
        model=served, provider=provider.name, request_id=request_id or answer.body_id, usage=usage,
        ttft_seconds=None if answer.first_token_at is None else answer.first_token_at - started,
        duration_seconds=duration)
    if validate is not None and not validate(completion):
        raise failure(classify.invalid_output())
    log.debug("llm call %s/%s ok in %.3f s (request %s)", provider.name, model, duration, completion.request_id)
    return completion
