"""Kept-alive connections to providers: one client per event loop, its connections reused
call after call, counted at the fake (one ``peer`` per TCP connection), and closed when
the worker stops or the loop ends."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
import uvloop

from cairn import RetryPolicy, Worker, workflow
from cairn.llm import ChatRequest, ProviderError, call_chat, chat, configure_providers, connections, providers
from cairn.llm import fake as f
from cairn.llm.fake import running_fake

MODEL = "gpt-4o-mini"
FAST = RetryPolicy(initial_interval=timedelta(seconds=0.05), maximum_interval=timedelta(seconds=0.2))


def request(stream: bool = False) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], stream=stream)


def peers(fake) -> list[str]:
    return [r["peer"] for r in fake.requests()]


def loop_client():
    return connections._clients[asyncio.get_running_loop()].client


async def outcome(provider, req=None) -> str:
    try:
        return (await call_chat(provider, req or request())).text
    except ProviderError as e:
        return f"{e.kind} {e.status}"


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_sequential_calls_share_one_connection(fake_llm, dialect, stream):
    # Error answers too: their body is read to the end, so the connection goes back to the pool.
    fake_llm.script([f.ok("one"), f.rate_limited("1"), f.ok("two"), f.status(500), f.ok("three")])
    provider = fake_llm.provider_config(dialect=dialect)
    got = [await outcome(provider, request(stream)) for _ in range(5)]
    assert got == ["one", "throttle 429", "two", "retryable 500", "three"]
    assert len(peers(fake_llm)) == 5
    assert len(set(peers(fake_llm))) == 1, "one TCP connection for five calls"


async def test_concurrent_calls_open_one_connection_each_then_reuse_them(fake_llm):
    provider = fake_llm.provider_config()
    fake_llm.script([f.slow_stream(0.05, text="a b c")], default=f.slow_stream(0.05, text="a b c"))
    for _ in range(3):
        assert await asyncio.gather(*(outcome(provider, request(True)) for _ in range(4))) == ["a b c"] * 4
    assert len(peers(fake_llm)) == 12
    assert len(set(peers(fake_llm))) == 4


async def test_a_connection_the_server_dropped_while_idle_is_not_reused():
    # The server's keep-alive timeout closes the idle connection; the next call sees it
    # readable (end of file) in the pool, discards it and connects afresh: no failed
    # request, no attempt spent, nothing sent twice.
    with running_fake(keepalive_timeout=0.2) as fake:
        provider = fake.provider_config()
        assert await outcome(provider) == "Hello from the fake provider."
        deadline = time.monotonic() + 10
        while fake.open_connections() and time.monotonic() < deadline:  # noqa: ASYNC110  (the server runs in another thread)
            await asyncio.sleep(0.02)
        assert fake.open_connections() == 0, "the server closed the idle connection"
        assert await outcome(provider) == "Hello from the fake provider."
        assert await outcome(provider) == "Hello from the fake provider."
        log = fake.requests()
    assert [r["outcome"] for r in log] == ["ok", "ok", "ok"]
    first, second, third = (r["peer"] for r in log)
    assert first != second, "a new connection after the server dropped the first"
    assert second == third, "and that one is kept alive"


async def test_a_call_abandoned_mid_answer_does_not_leave_its_connection_in_the_pool(fake_llm):
    # The TTFT limit gives up on a hung request: its connection is closed, not reused for
    # the next call (which would read the hung request's late answer).
    fake_llm.script([f.hang(2.0), f.drop_mid_stream(2), f.ok("after")], default=f.ok("again"))
    provider = fake_llm.provider_config(ttft_timeout=0.3)
    assert await outcome(provider) == "retryable None"
    assert await outcome(provider, request(True)) == "retryable None"
    assert await outcome(provider) == "after"
    assert await outcome(provider) == "again"
    hung, dropped, after, again = peers(fake_llm)
    assert len({hung, dropped, after}) == 3
    assert after == again


async def test_the_shared_client_keeps_no_key_and_no_cookie(fake_llm, monkeypatch):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("CAIRN_TEST_CANARY_KEY", canary)
    fake_llm.expect_key(canary)
    completion = {"id": "chatcmpl-1", "model": MODEL, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "with a cookie"}, "finish_reason": "stop"}]}
    fake_llm.script([f.status(200, headers={"set-cookie": "__cf_bm=abc123; Path=/"}, body=completion)])
    provider = fake_llm.provider_config(api_key_env="CAIRN_TEST_CANARY_KEY")
    assert (await call_chat(provider, request())).text == "with a cookie"
    assert (await call_chat(provider, request())).text == "Hello from the fake provider."
    client = loop_client()
    assert canary not in repr(dict(client.headers))
    assert not list(client.cookies.jar)
    log = fake_llm.requests()
    assert all(r["auth_ok"] for r in log)
    assert "cookie" not in log[1]["headers"], "calls stay independent: no cookie sent back"


async def test_close_connections_lets_calls_in_flight_finish(fake_llm):
    fake_llm.script([f.slow_stream(0.1, text="a b c d")])
    provider = fake_llm.provider_config()
    in_flight = asyncio.create_task(call_chat(provider, request(True)))
    deadline = time.monotonic() + 10
    while not fake_llm.requests() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    old = loop_client()
    await providers.close_connections()  # as a second worker on this loop stops
    assert asyncio.get_running_loop() not in connections._clients
    assert not old.is_closed, "not under the call in flight"
    assert (await in_flight).text == "a b c d"
    assert old.is_closed, "closed by the last call that used it"
    assert await outcome(provider) == "Hello from the fake provider."
    assert loop_client() is not old
    first, second = peers(fake_llm)
    assert first != second


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_loop_closes_its_client_as_it_shuts_down(fake_llm, run):
    provider = fake_llm.provider_config()

    async def two_calls():
        await call_chat(provider, request())
        await call_chat(provider, request())
        return asyncio.get_running_loop(), loop_client()

    loop, client = run(two_calls())
    assert client.is_closed
    assert loop not in connections._clients
    assert len(set(peers(fake_llm))) == 1


@workflow.defn
async def two_chats() -> list[str]:
    req = ChatRequest(model=MODEL, messages=[{"role": "user", "content": "Say hi"}])
    return [(await chat(req, retry_policy=FAST)).text, (await chat(req, retry_policy=FAST)).text]


async def test_a_worker_closes_its_connections_as_it_stops(client, db_url, fake_llm):
    configure_providers([fake_llm.provider_config(models=[MODEL])])
    try:
        async with Worker(db_url, workflows=[two_chats], poll_interval=0.2, lease_seconds=5.0):
            handle = await client.start(two_chats, id="two-chats")
            assert await handle.result(timeout=30) == ["Hello from the fake provider."] * 2
            used = loop_client()
        assert used.is_closed
        assert asyncio.get_running_loop() not in connections._clients
    finally:
        providers._registry = None
    assert len(set(peers(fake_llm))) == 1
