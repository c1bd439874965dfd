"""The LLM example: a workflow that summarizes a document with one durable model call.

While deepseek-chat's breaker is open (or its quota is gone), and for the retries after
two failed attempts on it, the call falls back to gpt-4o-mini; throttles (429 +
Retry-After) reschedule it without burning an attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn import workflow
from cairn.llm import ChatRequest, Fallback, chat


@dataclass
class Doc:
    id: str
    text: str


@workflow.defn
async def summarize(doc: Doc) -> str:
    reply = await chat(ChatRequest(
        model="deepseek-chat",
        messages=[{"role": "user", "content": f"Summarize: {doc.text}"}],
        max_tokens=400,
    ), fallback=Fallback(["gpt-4o-mini"]))  # while deepseek's breaker is open; after 2 failed attempts
    return reply.text
