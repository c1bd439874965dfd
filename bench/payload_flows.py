"""The workflow of bench/payloads.py: an LLM agent whose every call sends the whole
conversation so far (``cairn worker -m payload_flows``, with ``CAIRN_LLM_PROVIDERS`` naming
the fake provider)."""

from __future__ import annotations

from datetime import timedelta

from cairn import RetryPolicy, workflow
from cairn.llm import ChatRequest, chat

MODEL = "bench-model"
FAST = RetryPolicy(initial_interval=timedelta(seconds=0.05), maximum_interval=timedelta(seconds=0.2))
WORDS = ("order", "tool", "result", "customer", "invoice", "shipment", "status", "delayed", "refund", "policy",
         "account", "address", "warehouse", "carrier", "tracking", "number", "quantity", "price", "total", "tax")


def text(seed: int, size: int) -> str:
    """``size`` characters of words, different for each seed (deterministic: no randomness in
    workflow code), compressing about as well as English prose or tool output."""
    out: list[str] = []
    n, i = 0, seed * 7919
    while n < size:
        word = WORDS[(i * 2654435761 >> 7) % len(WORDS)] + str(i % 97)
        out.append(word)
        n += len(word) + 1
        i += 1
    return " ".join(out)[:size]


@workflow.defn
async def agent(turns: int, size: int, conversation: int = 0) -> dict[str, int]:
    """``turns`` model calls; each adds a user message (a tool's output, say) and the answer
    padded to ``size`` characters to the conversation that the next call sends whole. Each
    ``conversation`` has messages of its own but the same system prompt."""
    messages = [{"role": "system", "content": "You are a support agent. " + text(0, size)}]
    base = 1 + conversation * (2 * turns + 1)
    for i in range(turns):
        messages.append({"role": "user", "content": f"step {i}: " + text(base + 2 * i, size)})
        answer = await chat(ChatRequest(model=MODEL, messages=messages, max_tokens=50), retry_policy=FAST)
        messages.append({"role": "assistant", "content": answer.text + " " + text(base + 2 * i + 1, size)})
    return {"turns": turns, "messages": len(messages)}
