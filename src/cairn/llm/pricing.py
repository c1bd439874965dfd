"""Prices of well-known models and the cost of a call.

Prices are USD per million tokens, as published by the providers on :data:`PRICES_AS_OF`.
They change: override or add models per provider with ``prices`` in the provider's config.
A model with no known price costs ``None`` (unknown), never 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from cairn.llm.types import Usage

if TYPE_CHECKING:
    from cairn.llm.providers import ProviderConfig

TOKENS_PER_PRICE_UNIT = 1_000_000
PRICES_AS_OF = "2025-06-01"


class Price(BaseModel):
    """USD per million tokens; ``cached_input`` defaults to the ``input`` price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    output: float = Field(ge=0)


PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-4o": Price(input=2.50, cached_input=1.25, output=10.00),
    "gpt-4o-mini": Price(input=0.15, cached_input=0.075, output=0.60),
    "gpt-4.1": Price(input=2.00, cached_input=0.50, output=8.00),
    "gpt-4.1-mini": Price(input=0.40, cached_input=0.10, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, cached_input=0.025, output=0.40),
    # DeepSeek (standard hours; cached = cache hit)
    "deepseek-chat": Price(input=0.27, cached_input=0.07, output=1.10),
    "deepseek-reasoner": Price(input=0.55, cached_input=0.14, output=2.19),
    # Anthropic (cached = cache read; cache writes are billed at 1.25x input, not counted here)
    "claude-3-5-sonnet": Price(input=3.00, cached_input=0.30, output=15.00),
    "claude-3-5-haiku": Price(input=0.80, cached_input=0.08, output=4.00),
    "claude-3-7-sonnet": Price(input=3.00, cached_input=0.30, output=15.00),
    "claude-sonnet-4": Price(input=3.00, cached_input=0.30, output=15.00),
    "claude-opus-4": Price(input=15.00, cached_input=1.50, output=75.00),
}


def _lookup(table: dict[str, Price], model: str) -> Price | None:
    """Exact name, else the longest entry that the name extends with ``-`` (dated snapshots:
    ``gpt-4o-2024-08-06`` → ``gpt-4o``, ``claude-3-5-haiku-20241022`` → ``claude-3-5-haiku``)."""
    if model in table:
        return table[model]
    candidates = [name for name in table if model.startswith(name + "-")]
    return table[max(candidates, key=len)] if candidates else None


def price_for(model: str, provider: ProviderConfig | None = None) -> Price | None:
    """The price of ``model``: the provider's override first, then :data:`PRICES`."""
    if provider is not None and provider.prices:
        found = _lookup(provider.prices, model)
        if found is not None:
            return found
    return _lookup(PRICES, model)


def cost(usage: Usage | None, model: str, provider: ProviderConfig | None = None) -> float | None:
    """USD cost of a call, or ``None`` if usage or the model's price is unknown."""
    if usage is None:
        return None
    price = price_for(model, provider)
    if price is None:
        return None
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    micro = (usage.input_tokens - cached) * price.input + cached * cached_price + usage.output_tokens * price.output
    return micro / TOKENS_PER_PRICE_UNIT
