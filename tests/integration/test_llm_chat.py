"""cairn.llm.chat end to end: real workers, real Postgres, real HTTP against the fake provider.

Recorded usage and cost, replay without requests, throttles that burn no attempt,
breakers and fallbacks, retries, streaming followed through the client."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner

from cairn import RetryPolicy, workflow
from cairn import breakers as br
from cairn.cli import main
from cairn.engine.instance import replay
from cairn.errors import WorkflowFailure
from cairn.llm import ChatRequest, Fallback, chat, configure_providers
from cairn.llm import fake as f
from cairn.llm import providers as providers_mod
from cairn.views import summarize
from cairn.workflow import WorkflowInfo

PRIMARY, BACKUP = "deepseek-chat", "gpt-4o-mini"
FAST = RetryPolicy(initial_interval=timedelta(seconds=0.05), maximum_interval=timedelta(seconds=0.2), jitter=0.1)
BREAKER = br.BreakerConfig(window="count", window_size=4, minimum_calls=4, recovery_timeout=30)


def _req(model: str = PRIMARY, **kw) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": "Summarize: the cat sat."}],
                       max_tokens=40, **kw)


@workflow.defn
async def summarize_doc(use_fallback: bool) -> dict:
    reply = await chat(_req(), fallback=Fallback([BACKUP]) if use_fallback else None, retry_policy=FAST,
                       throttle_budget=60)
    return {"text": reply.text, "model": reply.model, "attempt": reply.attempt,
            "skipped": [s["model"] for s in reply.skipped]}


@workflow.defn
async def budgeted() -> str:
    return (await chat(_req(), throttle_budget=1.5, retry_policy=FAST)).text


@workflow.defn
async def streamed() -> str:
    return (await chat(_req(), stream=True, retry_policy=FAST)).text


@pytest.fixture
def llm(fake_llm):
    """The fake as the provider of both models (one breaker per model)."""
    configure_providers([fake_llm.provider_config(models=[PRIMARY, BACKUP], breaker=BREAKER)])
    yield fake_llm
    providers_mod._registry = None


def breaker(fake, model: str) -> str:
    return f"fake:{model}:{fake.url}"


async def run_one(client, start_worker, wf, *args, wid: str, timeout: float = 30):
    await start_worker(workflows=[summarize_doc, budgeted, streamed])
    handle = await client.start(wf, *args, id=wid)
    return handle, await handle.result(timeout=timeout)


async def test_chat_completes_and_records_usage_and_cost(client, start_worker, llm, sql, db_url):
    llm.script([f.ok("A cat sat.", input_tokens=1000, cached_input_tokens=400, output_tokens=50)])
    handle, result = await run_one(client, start_worker, summarize_doc, False, wid="sum-1")
    assert result == {"text": "A cat sat.", "model": PRIMARY, "attempt": 1, "skipped": []}
    [event] = [e for e in await handle.history() if e.type == "ActivityCompleted"]
    usage = event.data["result"]["usage"]
    assert (usage["input_tokens"], usage["cached_input_tokens"], usage["output_tokens"]) == (1000, 400, 50)
    assert usage["cost_usd"] == pytest.approx((600 * 0.27 + 400 * 0.07 + 50 * 1.10) / 1e6)
    assert event.data["result"]["request_id"] == "req_fake_1"
    assert "deepseek-chat" in summarize(event)
    assert "1000 in (400 cached) / 50 out" in summarize(event)
    d = await handle.describe()
    assert d.llm_totals == {"calls": 1, "input_tokens": 1000, "cached_input_tokens": 400, "output_tokens": 50,
                            "cost_usd": pytest.approx(usage["cost_usd"])}
    assert d.llm_calls[0]["model"] == PRIMARY
    assert d.llm_calls[0]["ttft_seconds"] is not None
    assert d.to_json()["llm_totals"]["output_tokens"] == 50
    assert len(llm.requests()) == 1
    runner = CliRunner()
    described = await asyncio.to_thread(runner.invoke, main, ["--database-url", db_url, "describe", "sum-1"])
    assert described.exit_code == 0, described.output
    assert "llm calls:" in described.output
    assert "fake/deepseek-chat" in described.output
    assert f"${usage['cost_usd']:.6f}" in described.output
    assert "llm total 1 call(s), 1000 in (400 cached) / 50 out tokens" in described.output
    listed = await asyncio.to_thread(runner.invoke, main, ["--database-url", db_url, "history", "sum-1"])
    assert "1000 in (400 cached) / 50 out" in listed.output
    # The built-in activity was registered by the worker itself (no activities= given).
    assert sql("SELECT count(*) FROM cairn.breakers WHERE name = %s", (breaker(llm, PRIMARY),)) == [(1,)]


async def test_replay_and_a_restarted_worker_make_no_request(client, start_worker, llm, db_url):
    llm.script([f.ok("once")])
    handle, result = await run_one(client, start_worker, summarize_doc, False, wid="replayed")
    assert result["text"] == "once"
    before = llm.requests()
    events = await handle.history()
    info = WorkflowInfo(workflow_id="replayed", run_id=str(handle.run_id), workflow_type="summarize_doc",
                        queue="default", namespace="default", start_time=events[0].at)
    inst = replay(workflow.definition_of(summarize_doc), info, events)
    assert inst.closed
    inst.dispose()
    # A fresh worker (empty cache) answering a query replays the whole history.
    from cairn import Worker
    async with Worker(db_url, workflows=[summarize_doc], poll_interval=0.2):
        d = await handle.describe()
        assert d.status == "completed"
    assert llm.requests() == before


@workflow.defn
async def two_calls() -> list[str]:
    first = (await chat(_req(), retry_policy=FAST)).text
    await workflow.wait_signal("go")
    second = (await chat(_req(), retry_policy=FAST)).text
    return [first, second]


async def test_a_worker_taking_over_mid_run_replays_the_first_call_without_a_request(client, start_worker, llm):
    llm.script([f.ok("first"), f.ok("second")])
    one = await start_worker(workflows=[two_calls])
    handle = await client.start(two_calls, id="taken-over")
    deadline = time.monotonic() + 20
    while not any(e.type == "ActivityCompleted" for e in await handle.history()):
        assert time.monotonic() < deadline, "the first call did not complete"
        await asyncio.sleep(0.05)
    one.stop()  # the run now waits for its signal; its live instance goes with this worker
    two = await start_worker(workflows=[two_calls])  # an empty cache: the next task replays the history
    await handle.signal("go")
    assert await handle.result(timeout=20) == ["first", "second"]
    assert two.stats.cache_misses >= 1
    assert one.stats.workflow_tasks == 2
    assert len(llm.requests()) == 2, "the replayed first call made no request"


async def test_429_with_retry_after_reschedules_without_burning_an_attempt(client, start_worker, llm, sql):
    llm.script([f.rate_limited("1")], default=f.ok("after the throttle"))
    handle, result = await run_one(client, start_worker, summarize_doc, False, wid="throttled")
    assert result["text"] == "after the throttle"
    assert result["attempt"] == 1
    first, second = llm.requests()
    assert second["time"] - first["time"] >= 1.0, "the next request came before Retry-After"
    [done] = [e for e in await handle.history() if e.type == "ActivityCompleted"]
    assert done.data["attempt"] == 1
    [(generation,)] = sql("SELECT generation FROM cairn.breakers WHERE name = %s", (breaker(llm, PRIMARY),))
    assert generation > 1, "the 429 opened the breaker until Retry-After"


async def test_throttle_budget_exhaustion_fails_clearly(client, start_worker, llm):
    llm.script([], default=f.rate_limited("1"))
    await start_worker(workflows=[budgeted])
    handle = await client.start(budgeted, id="budget")
    with pytest.raises(WorkflowFailure) as info:
        await handle.result(timeout=30)
    assert "ThrottleBudgetExhausted" in str(info.value)
    [failed] = [e for e in await handle.history() if e.type == "ActivityFailed"]
    assert failed.data["failure"]["type"] == "ThrottleBudgetExhausted"
    assert "throttle budget of 1.5 s" in failed.data["failure"]["message"]


async def test_5xx_is_retried_by_the_retry_policy(client, start_worker, llm):
    llm.script([f.status(503), f.status(500)], default=f.ok("third time"))
    _handle, result = await run_one(client, start_worker, summarize_doc, False, wid="5xx")
    assert result == {"text": "third time", "model": PRIMARY, "attempt": 3, "skipped": []}
    assert [r["outcome"].split()[0] for r in llm.requests()][:2] == ["status", "status"]


async def test_quota_forces_the_breaker_open_and_the_fallback_serves(client, start_worker, llm, sql):
    llm.script([f.status(402, model=PRIMARY)], default=f.ok("from the backup"))
    _handle, result = await run_one(client, start_worker, summarize_doc, True, wid="quota")
    assert result["model"] == BACKUP
    assert result["attempt"] == 1
    assert result["skipped"] == [PRIMARY]
    assert [r["model"] for r in llm.requests()] == [PRIMARY, BACKUP]
    assert sql("SELECT state FROM cairn.breakers WHERE name = %s", (breaker(llm, PRIMARY),)) == [("forced_open",)]
    # The next run skips the primary without calling it.
    h2 = await client.start(summarize_doc, True, id="quota-2")
    assert (await h2.result(timeout=30))["model"] == BACKUP
    assert [r["model"] for r in llm.requests()] == [PRIMARY, BACKUP, BACKUP]


async def test_open_breaker_uses_the_fallback_without_calling_the_primary(client, start_worker, llm):
    async with client.pool.connection() as conn:
        now = (await (await conn.execute("SELECT now()")).fetchone())[0]
        await br.trip(conn, breaker(llm, PRIMARY), now + timedelta(seconds=60), config=BREAKER, reason="test")
    llm.script([], default=f.ok("backup"))
    _, result = await run_one(client, start_worker, summarize_doc, True, wid="open")
    assert result["model"] == BACKUP
    assert result["skipped"] == [PRIMARY]
    assert [r["model"] for r in llm.requests()] == [BACKUP]


async def test_no_fallback_reschedules_until_the_breaker_admits(client, start_worker, llm, sql):
    async with client.pool.connection() as conn:
        now = (await (await conn.execute("SELECT now()")).fetchone())[0]
        await br.trip(conn, breaker(llm, PRIMARY), now + timedelta(seconds=1.5), config=BREAKER, reason="test")
    llm.script([], default=f.ok("primary again"))
    started = time.time()
    _handle, result = await run_one(client, start_worker, summarize_doc, False, wid="wait-breaker")
    assert result["model"] == PRIMARY
    assert result["attempt"] == 1
    [req] = llm.requests()
    assert req["time"] - started >= 1.0, "the primary was called while its breaker was open"
    [(not_permitted,)] = sql("SELECT not_permitted FROM cairn.breakers WHERE name = %s", (breaker(llm, PRIMARY),))
    assert not_permitted >= 1


async def test_stream_is_followed_and_a_retry_restarts_it(client, start_worker, llm):
    text = " ".join(f"w{i}" for i in range(30))
    llm.script([f.drop_mid_stream(after_chunks=6, text=text)], default=f.slow_stream(0.03, text=text))
    await start_worker(workflows=[streamed])
    handle = await client.start(streamed, id="stream")
    chunks = []

    async def collect() -> None:
        async for c in handle.stream():
            chunks.append(c)

    await asyncio.wait_for(collect(), 30)
    assert await handle.result(timeout=5) == text
    attempts = [c.attempt for c in chunks if not c.restart]
    assert 2 in attempts
    final = "".join(c.text for c in chunks if c.attempt == 2 and not c.restart)
    assert final == text, "the retried attempt's stream is whole and not appended to the first"
    if 1 in attempts:  # the follower saw the dropped attempt: the restart is marked
        assert any(c.restart and c.attempt == 2 for c in chunks)
    assert len([c for c in chunks if c.attempt == 2 and c.text]) > 1, "tokens arrived in several batches"


@workflow.defn
async def default_retries() -> str:
    return (await chat(_req())).text


async def test_a_call_without_a_retry_policy_gets_the_chat_default(client, start_worker, llm):
    """Capped at 8 s between attempts (the engine's default grows to 100 s)."""
    from cairn.llm.chat import DEFAULT_CHAT_RETRY_POLICY
    llm.script([f.ok("fine")])
    await start_worker(workflows=[default_retries])
    handle = await client.start(default_retries, id="default-retries")
    assert await handle.result(timeout=30) == "fine"
    scheduled = [e for e in await handle.history() if e.type == "ActivityScheduled"]
    assert [e.data["options"]["retry_policy"] for e in scheduled] == [
        DEFAULT_CHAT_RETRY_POLICY.model_dump(mode="json", exclude={"on_exhausted"})]  # stored without its default
    assert DEFAULT_CHAT_RETRY_POLICY.next_delay(10, "LLMServerError") <= 8 * 1.1
