"""Workflows for the multi-process LLM tests (``cairn worker -m llm_flows`` with
``CAIRN_LLM_PROVIDERS`` naming a providers file that points at the test's fake provider).
The chat activity is built in: the workers register it because providers are configured."""

from __future__ import annotations

from datetime import timedelta

from cairn import RetryPolicy, workflow
from cairn.llm import ChatRequest, chat

MODEL = "deepseek-chat"
FAST = RetryPolicy(initial_interval=timedelta(seconds=0.05), maximum_interval=timedelta(seconds=0.2), jitter=0.2)


def request(i: int) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=[{"role": "user", "content": f"Say hello #{i}"}], max_tokens=20)


@workflow.defn
async def ask(i: int) -> str:
    return (await chat(request(i), retry_policy=FAST, throttle_budget=3600)).text


@workflow.defn
async def ask_once(i: int) -> str:
    """Fails for good on the first error (the canary test's failing runs)."""
    return (await chat(request(i), retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=0.05))).text


@workflow.defn
async def ask_streaming(i: int) -> str:
    return (await chat(request(i), stream=True, retry_policy=FAST)).text


@workflow.defn
async def storm_chain(i: int) -> list[str]:
    """Two or three calls in a row at a new user's defaults (no retry policy, no throttle
    budget); each message carries ``call s<i>.<n>`` so the fake's log tells the calls apart."""
    texts = []
    for n in range(2 + i % 2):
        ask = ChatRequest(model=MODEL, messages=[{"role": "user", "content": f"call s{i}.{n}: say hello"}],
                          max_tokens=20)
        texts.append((await chat(ask)).text)
    return texts


@workflow.defn
async def ask_call(key: str) -> str:
    """One call whose message carries ``call <key>`` (how a mock's log tells the calls apart)."""
    ask = ChatRequest(model=MODEL, messages=[{"role": "user", "content": f"call {key}: say hello"}], max_tokens=20)
    return (await chat(ask, retry_policy=FAST, throttle_budget=3600)).text


@workflow.defn
async def ask_call_streaming(key: str) -> str:
    ask = ChatRequest(model=MODEL, messages=[{"role": "user", "content": f"call {key}: say hello"}], max_tokens=20)
    return (await chat(ask, stream=True, retry_policy=FAST, throttle_budget=3600)).text


@workflow.defn
async def agent(turns: int, size: int) -> dict[str, int]:
    """An agent's conversation: each turn sends the whole message list so far (the payload
    store's test: without it the list outgrows the payload limit; with it each message is
    stored once and history holds references)."""
    messages = [{"role": "system", "content": "You are terse. " + "s" * size}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"turn {i}: " + "q" * size})
        answer = await chat(ChatRequest(model=MODEL, messages=messages, max_tokens=20), retry_policy=FAST)
        messages.append({"role": "assistant", "content": f"{answer.text} ({i}) " + "a" * size})
    return {"turns": turns, "messages": len(messages), "chars": sum(len(m["content"]) for m in messages)}
