"""A research agent: a ReAct loop as a durable workflow.

The workflow asks a model which tool to call, runs the tool (a search over the small corpus
in ``research_corpus/``) as an activity, feeds the result back, and stops at an answer or
at a step limit. Every model call is one recorded activity (`cairn.llm.chat`): a 429 waits
for its Retry-After without burning an attempt, a 5xx outage is retried by the retry
policy, and a replay of the run (`cairn replay ID -m research_agent`) calls no model at all.
`cairn describe ID` shows each call's tokens and the run's cost.

Run it: ``python examples/research_agent.py`` (embedded Postgres, or ``CAIRN_DATABASE_URL``
after ``cairn db migrate``); it starts a fake provider that throws two 429s and then goes
down for three calls before it answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from cairn import Client, RetryPolicy, Worker, activity, workflow
from cairn.breakers import BreakerConfig
from cairn.llm import ChatRequest, ProviderConfig, chat, configure_providers
from cairn.llm import fake as f

CORPUS = Path(__file__).resolve().parent / "research_corpus"
MODEL = "deepseek-chat"

SEARCH_TOOL = {"type": "function", "function": {
    "name": "search_corpus",
    "description": "Full-text search over the engineering notes; returns the best paragraphs.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}}
SYSTEM = ("You answer engineering questions from the notes. Call search_corpus as often as you need, "
          "then answer in two sentences and name your sources.")


class Question(BaseModel):
    text: str
    max_steps: int = 5            # model calls at most; then the agent gives up
    retry_seconds: float = 1.0    # first retry delay of a failed model call (doubles each time)


class Answer(BaseModel):
    text: str
    stopped: Literal["answer", "step_limit"]
    steps: int
    sources: list[str]


# ---------------------------------------------------------------- the tool: an activity


@activity.defn
def search_corpus(query: str) -> list[dict[str, str]]:
    """The three paragraphs of the corpus sharing the most words with ``query``."""
    words = set(re.findall(r"[a-z]{3,}", query.lower()))
    scored = []
    for path in sorted(CORPUS.glob("*.md")):
        for paragraph in path.read_text().split("\n\n"):
            score = len(words & set(re.findall(r"[a-z]{3,}", paragraph.lower())))
            if score:
                scored.append((score, path.name, " ".join(paragraph.split())))
    scored.sort(key=lambda s: -s[0])
    return [{"source": name, "text": text} for _, name, text in scored[:3]]


# ---------------------------------------------------------------- the agent: a workflow


@workflow.defn
async def research(question: Question) -> Answer:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": question.text}]
    sources: list[str] = []
    retry = RetryPolicy(initial_interval=timedelta(seconds=question.retry_seconds), maximum_attempts=8)
    for step in range(1, question.max_steps + 1):
        reply = await chat(ChatRequest(model=MODEL, messages=messages, tools=[SEARCH_TOOL], max_tokens=500),
                           retry_policy=retry)
        if not reply.tool_calls:
            return Answer(text=reply.text, stopped="answer", steps=step, sources=sources)
        messages.append({"role": "assistant", "content": reply.text or None, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls]})
        for call in reply.tool_calls:
            result: Any
            try:
                query = json.loads(call.arguments)["query"]
            except (ValueError, KeyError, TypeError):
                result = {"error": f"bad arguments for {call.name}: {call.arguments!r}"}
            else:
                result = await workflow.execute_activity(search_corpus, query, start_to_close_timeout=30)
                sources += [s for s in dict.fromkeys(hit["source"] for hit in result) if s not in sources]
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    return Answer(text="", stopped="step_limit", steps=question.max_steps, sources=sources)


# ---------------------------------------------------------------- running it


def provider(fake: f.FakeLLM, recovery_seconds: float = 1.0) -> ProviderConfig:
    """The fake as the model's provider. Its breaker opens on a 429 until Retry-After and on
    a failed probe for ``recovery_seconds`` (doubling up to 10x); one good probe closes it."""
    return fake.provider_config(models=[MODEL], breaker=BreakerConfig(
        recovery_timeout=recovery_seconds, max_recovery_timeout=10 * recovery_seconds,
        permitted_calls_in_half_open=1))


def flaky_provider(fake: f.FakeLLM) -> None:
    """Scripts the fake provider: two 429s (Retry-After: 1 s), a 3-call outage (503), then a
    model that searches twice and answers."""
    def search(query: str, n: int) -> f.Step:
        return f.ok("", tool_calls=[{"id": f"call_{n}", "name": "search_corpus",
                                     "arguments": json.dumps({"query": query})}], input_tokens=350, output_tokens=20)

    fake.script([
        f.rate_limited("1", times=2),
        f.status(503, times=3),
        search("durable timers after a crash", 1),
        search("workers skip locked rows", 2),
        f.ok("Completed steps are replayed from the history, not re-run, and durable timers survive "
             "restarts; SKIP LOCKED lets workers claim rows without waiting. Sources: durable-execution.md, "
             "skip-locked.md.", input_tokens=900, output_tokens=45),
    ])


async def main() -> None:
    with f.running_fake() as fake:
        configure_providers([provider(fake)])
        flaky_provider(fake)
        async with await Client.connect() as client, Worker(client.url, workflows=[research],
                                                            activities=[search_corpus]):
            handle = await client.start(research, Question(text="How does a workflow survive a crash?"),
                                        id=f"research-{uuid.uuid4().hex[:8]}")
            answer = Answer.model_validate(await handle.result(timeout=120))
            print(f"{answer.stopped} after {answer.steps} model calls: {answer.text}\n")
            for r in fake.requests():
                print(f"  provider got call {r['seq']}: {r['outcome']}")
            totals = (await handle.describe()).llm_totals or {}
            print(f"\n{totals.get('calls')} recorded model calls, {totals.get('input_tokens')} in / "
                  f"{totals.get('output_tokens')} out tokens, ${totals.get('cost_usd') or 0:.6f}")
            print(f"replay it (no model call): cairn replay {handle.workflow_id} -m research_agent")


if __name__ == "__main__":
    asyncio.run(main())
