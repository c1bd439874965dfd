"""Calling LLMs from Cairn: providers, error classification, prices.

The provider layer makes one HTTP call and classifies its failure; the engine (activities,
breakers, rate limits) decides when to call again.
"""

from __future__ import annotations

from cairn.llm.chat import CHAT_ACTIVITY, ChatResult, Fallback, chat, llm_chat
from cairn.llm.classify import Classification, ErrorKind, classify_status, parse_retry_after
from cairn.llm.pricing import PRICES, PRICES_AS_OF, Price, cost, price_for
from cairn.llm.providers import (
    ProviderConfig,
    ProviderError,
    call_chat,
    close_connections,
    configure_providers,
    configured_providers,
    get_provider,
    load_providers,
    provider_for,
    resolve_provider,
)
from cairn.llm.types import ChatRequest, Completion, ToolCall, Usage

__all__ = [
    "CHAT_ACTIVITY",
    "PRICES",
    "PRICES_AS_OF",
    "ChatRequest",
    "ChatResult",
    "Classification",
    "Completion",
    "ErrorKind",
    "Fallback",
    "Price",
    "ProviderConfig",
    "ProviderError",
    "ToolCall",
    "Usage",
    "call_chat",
    "chat",
    "classify_status",
    "close_connections",
    "configure_providers",
    "configured_providers",
    "cost",
    "get_provider",
    "llm_chat",
    "load_providers",
    "parse_retry_after",
    "price_for",
    "provider_for",
    "resolve_provider",
]
