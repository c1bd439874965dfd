"""The JSON-able models of an LLM call: what a workflow asks for and what history records.

None of them ever holds an API key: keys are read from the environment inside
:func:`cairn.llm.providers.call_chat` and go nowhere else.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatRequest(BaseModel):
    """One chat completion request, in the OpenAI shape (translated for other dialects).

    Attributes:
        model: the model name as the provider knows it (``deepseek-chat``, ``gpt-4o-mini``).
        messages: ``[{"role": "user", "content": "..."}, ...]``.
        max_tokens: the output limit (the Anthropic dialect requires one: default 4096).
        temperature: sampling temperature.
        tools: tool definitions (``{"type": "function", "function": {...}}``).
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or ``{"type": "function", ...}``.
        response_format: e.g. ``{"type": "json_object"}`` (OpenAI dialect only).
        stop: stop sequences.
        stream: ask for a streamed answer (``call_chat`` also streams when given ``on_chunk``).
        provider: the provider's name; ``None`` looks it up by model name.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stop: list[str] | None = None
    stream: bool = False
    provider: str | None = None


class ToolCall(BaseModel):
    """A tool call the model asked for; ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str


class Usage(BaseModel):
    """Tokens of one call, and its cost when the model has a price.

    ``input_tokens`` counts every prompt token, cached ones included (OpenAI's convention;
    Anthropic's separate cache-read and cache-write counts are added in);
    ``cached_input_tokens`` is the part served from the provider's prompt cache.
    """

    input_tokens: int
    cached_input_tokens: int = 0
    output_tokens: int
    cost_usd: float | None = None


class Completion(BaseModel):
    """The answer of one successful call.

    Attributes:
        text: the assistant's text (empty when it only called tools).
        tool_calls: tools the model asked to call.
        finish_reason: as the provider says it (``stop``, ``length``, ``tool_calls``,
            ``end_turn``, ...); ``None`` if it said nothing.
        model: the model that served the call, as the provider reports it.
        provider: the provider's configured name.
        request_id: the provider's id of the request (``x-request-id``/``request-id``
            header, else the body's id), for support tickets.
        usage: tokens and cost; ``None`` when the provider reported no usage (never guessed).
        ttft_seconds: time to the first token.
        duration_seconds: time of the whole call.
    """

    text: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    model: str
    provider: str
    request_id: str | None = None
    usage: Usage | None = None
    ttft_seconds: float | None = None
    duration_seconds: float
