"""The defects a provider storm found in the chat activity (issue 14), each pinned down:

- an attempt never needs two pooled connections at once (it deadlocked a worker's pool when
  pool-size calls failed together), nor one while the provider call runs;
- a key the provider echoes back is stored nowhere (history, runs.failure, describe, logs);
- the per-call fallback policy: the next model after N failed attempts of this call, and at
  once on a context-length error when a later model has a larger window;
- a bad providers config is bad input (exit 2); CAIRN_LLM_PROVIDERS takes inline JSON;
- a call the provider answered is not failed (and paid again) because the database went
  away before its bookkeeping (the storm under faults, test_llm_storm_faults.py).

The throttle, probe-lease and sliding-window defects are pinned in test_breakers.py and
test_ratelimits.py; the storm itself in tests/acceptance/test_llm_storm.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import psycopg
import pytest
from click.testing import CliRunner
from psycopg_pool import AsyncConnectionPool

from cairn import RetryPolicy, activity, workflow
from cairn import breakers as br
from cairn.activity import ActivityInfo, Reschedule
from cairn.cli import main
from cairn.errors import ApplicationError, WorkflowFailure
from cairn.llm import ChatRequest, Fallback, chat, configure_providers
from cairn.llm import fake as f
from cairn.llm import providers as providers_mod
from cairn.llm.chat import llm_chat
from cairn.ui import pages
from support import wait_until

PRIMARY, BACKUP = "deepseek-chat", "gpt-4o-mini"
FAST = RetryPolicy(initial_interval=timedelta(seconds=0.05), maximum_interval=timedelta(seconds=0.2), jitter=0.1)
# Not key-shaped (no sk- prefix): a self-hosted gateway's key.
GATEWAY_KEY = "gw-live-7f3a9c2e5b1d4a6f0e8c"


def _req(model: str = PRIMARY) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": "Summarize: the cat sat."}], max_tokens=40)


async def cli(db_url: str, *args: str) -> str:
    """A CLI command's output (in a thread: the CLI runs its own event loop)."""
    out = await asyncio.to_thread(CliRunner().invoke, main, ["--database-url", db_url, *args])
    assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
    return out.output


@pytest.fixture
def registry_reset():
    yield
    providers_mod._registry = None


# ---------------------------------------------------------------- one connection at a time


@pytest.fixture
async def one_connection(db_url):
    """A pool of ONE connection that gives up after 3 s: an attempt that nests checkouts,
    or holds one while it waits for another, raises PoolTimeout here."""
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=1, timeout=3, open=False,
                               kwargs={"autocommit": True})
    await pool.open(wait=True)
    yield pool
    await pool.close()


@pytest.fixture
async def pool(db_url):
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
    await pool.open(wait=True)
    yield pool
    await pool.close()


async def _attempt(pool: AsyncConnectionPool, call: dict, attempt: int = 1, seq: int = 1):
    now = datetime.now(UTC)
    info = ActivityInfo(activity_type="cairn.llm.chat", workflow_id="w", workflow_type="t",
                        run_id="00000000-0000-0000-0000-000000000001", seq=seq, attempt=attempt, queue="default",
                        scheduled_at=now, started_at=now, deadline=None, _pool=pool)
    token = activity._current.set(info)
    try:
        return await llm_chat(call)
    finally:
        activity._current.reset(token)


@pytest.mark.parametrize("rpm", [None, 1000], ids=["no-limits", "rate-limited"])
async def test_an_attempt_needs_one_connection_at_a_time(fake_llm, one_connection, registry_reset, rpm):
    """The defect: the failure path held a connection and asked the pool for a second, so
    pool-size calls failing together deadlocked until PoolTimeout (30 s), starving lease
    renewals. Every path of an attempt runs on a pool of one connection."""
    breaker = br.BreakerConfig(window_size=100, minimum_calls=100, permitted_calls_in_half_open=1,
                               recovery_timeout=1)
    configure_providers([fake_llm.provider_config(models=[PRIMARY, BACKUP], breaker=breaker, rpm=rpm,
                                                  context_windows={PRIMARY: 8_000, BACKUP: 128_000})])
    call = {"request": _req().model_dump(mode="json", exclude_defaults=True), "fallback": [BACKUP]}
    fake_llm.script([f.ok("fine")])
    assert (await _attempt(one_connection, call))["text"] == "fine"
    fake_llm.script([f.status(500)])
    with pytest.raises(ApplicationError) as failed:
        await _attempt(one_connection, call)
    assert not failed.value.non_retryable
    fake_llm.script([f.rate_limited("2")])
    with pytest.raises(Reschedule) as throttled:
        await _attempt(one_connection, call)
    assert throttled.value.kind == "throttle"
    fake_llm.script([f.context_too_long(model=PRIMARY), f.ok("the long one", model=BACKUP)])
    # the throttle above opened the primary's breaker for 2 s: the backup serves at once
    assert (await _attempt(one_connection, call))["model"] == BACKUP
    fake_llm.script([f.quota_exhausted(model=BACKUP)])
    with pytest.raises(ApplicationError) as quota:
        await _attempt(one_connection, {**call, "request": _req(BACKUP).model_dump(mode="json"), "fallback": []})
    assert quota.value.type == "LLMQuotaExhausted"


@pytest.mark.parametrize("counted", [True, False], ids=["429s-counted", "429s-not-counted"])
async def test_a_429_keeps_its_request_counted_only_if_the_provider_counts_it(fake_llm, pool, registry_reset,
                                                                              db_url, counted):
    """OpenAI counts unsuccessful requests toward the limit (the default); a provider that
    does not (rate_counts_throttled=false) gets a 429's reservation back."""
    configure_providers([fake_llm.provider_config(models=[PRIMARY], rpm=100, rate_counts_throttled=counted)])
    fake_llm.script([f.rate_limited("1")])
    with pytest.raises(Reschedule) as throttled:
        await _attempt(pool, {"request": _req().model_dump(mode="json", exclude_defaults=True)})
    assert throttled.value.kind == "throttle"
    with psycopg.connect(db_url) as conn:
        taken = conn.execute("SELECT coalesce(sum(requests), 0) FROM cairn.rate_limit_windows").fetchone()[0]
    assert taken == (1 if counted else 0)


async def test_a_refused_call_holds_a_ticket_and_uses_it(fake_llm, pool, registry_reset, db_url):
    """rpm 1 over a 2 s window, counted over the whole window (rate_enforcement=sliding): a
    second call is refused with a ticket for the slot where it fits, named by its activity's
    idempotency key; back then, it is served and its ticket is gone (used, or given back for a
    fresh reservation if it came back after its bucket: test_ratelimits.py pins both)."""
    configure_providers([fake_llm.provider_config(models=[PRIMARY], rpm=1, rate_window_seconds=2,
                                                  rate_enforcement="sliding")])
    call = {"request": _req().model_dump(mode="json", exclude_defaults=True)}
    fake_llm.script([f.ok("first"), f.ok("second")])
    assert (await _attempt(pool, call, seq=1))["text"] == "first"
    with pytest.raises(Reschedule) as refused:
        await _attempt(pool, call, seq=2)
    assert refused.value.kind == "rate_limit"
    with psycopg.connect(db_url) as conn:
        holders = conn.execute("SELECT holder FROM cairn.rate_limit_tickets").fetchall()
    assert holders == [("w/00000000-0000-0000-0000-000000000001/2",)]
    await asyncio.sleep(refused.value.delay)
    assert (await _attempt(pool, call, seq=2, attempt=1))["text"] == "second"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM cairn.rate_limit_tickets").fetchone()[0] == 0
        # The first request's bucket has left the window; the second is counted once, in
        # its ticket's bucket.
        assert conn.execute("SELECT sum(requests) FROM cairn.rate_limit_windows").fetchone()[0] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_answered_call_is_not_failed_by_a_lost_database_connection(fake_llm, db_url, registry_reset,
                                                                            stream):
    """The defect: the breaker's success record after the provider's 200 (or a streamed
    batch while it answered) met a terminated connection (pg_terminate_backend, a Postgres
    restart), the attempt failed with it, and the engine's retry sent the call again: paid
    twice."""
    configure_providers([fake_llm.provider_config(models=[PRIMARY])])
    app = "cairn-test-answered-call"
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=1, open=False,
                               kwargs={"autocommit": True, "application_name": app})
    await pool.open(wait=True)
    try:
        fake_llm.script([f.slow_stream(0.2, text="paid for") if stream else f.hang(0.5, text="paid for")])
        request = _req().model_dump(mode="json", exclude_defaults=True)
        call = asyncio.create_task(_attempt(pool, {"request": request, "stream": stream}))
        # The request is at the provider: the pool's one connection is idle.
        await wait_until(fake_llm.requests, interval=0.01, what="the request at the provider")
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as admin:
            cur = await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE datname = current_database() AND application_name = %s", (app,))
            assert [ok for (ok,) in await cur.fetchall()] == [True]
        assert (await call)["text"] == "paid for"
        assert len(fake_llm.requests()) == 1
    finally:
        await pool.close()


async def _breaker_row(db_url: str, name: str) -> tuple:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        return await (await conn.execute(
            "SELECT state, extract(epoch FROM open_until - now()), consecutive_opens FROM cairn.breakers "
            "WHERE name = %s", (name,))).fetchone()


async def test_a_429_on_the_half_open_probe_waits_its_retry_after_not_a_minute(fake_llm, pool, registry_reset,
                                                                                db_url):
    """The defect: a 429 with Retry-After: 3 on the probe re-opened the breaker for
    recovery x multiplier (60.4-63.3 s measured) before the 3 s applied, fleet-wide."""
    breaker = br.BreakerConfig(window_size=2, minimum_calls=2, recovery_timeout=0.5, recovery_multiplier=120,
                               max_recovery_timeout=600, permitted_calls_in_half_open=1)
    configure_providers([fake_llm.provider_config(models=[PRIMARY], breaker=breaker)])
    name = f"fake:{PRIMARY}:{fake_llm.url}"
    call = {"request": _req().model_dump(mode="json", exclude_defaults=True)}
    fake_llm.script([f.status(500), f.status(500), f.rate_limited("3")])
    for _ in range(2):
        with pytest.raises(ApplicationError):
            await _attempt(pool, call)
    assert (await _breaker_row(db_url, name))[0] == "open"
    await asyncio.sleep(0.6)  # the recovery timeout: the next call is the half-open probe
    with pytest.raises(Reschedule) as throttled:
        await _attempt(pool, call)
    assert throttled.value.delay == 3
    state, open_for, opens = await _breaker_row(db_url, name)
    assert state == "open"
    assert 2 < open_for <= 3.1, "open for the Retry-After, not recovery x multiplier (60 s)"
    assert opens == 1, "the throttle did not count as a consecutive open"


async def test_a_slow_probe_holds_its_slot_for_the_whole_call(fake_llm, pool, registry_reset):
    """The defect: probe leases were not renewed while the call ran, so a call slower than
    probe_lease_seconds freed its slot and more probes reached the provider."""
    breaker = br.BreakerConfig(window_size=1, minimum_calls=1, recovery_timeout=0.2, permitted_calls_in_half_open=1,
                               probe_lease_seconds=0.6)
    configure_providers([fake_llm.provider_config(models=[PRIMARY], breaker=breaker)])
    call = {"request": _req().model_dump(mode="json", exclude_defaults=True)}
    fake_llm.script([f.status(500), f.hang(2.0)])
    with pytest.raises(ApplicationError):
        await _attempt(pool, call)
    await asyncio.sleep(0.3)
    probe = asyncio.create_task(_attempt(pool, call))  # the probe: 2 s, three leases long
    await asyncio.sleep(1.5)
    with pytest.raises(Reschedule) as refused:
        await _attempt(pool, call)
    assert refused.value.kind == "breaker"
    assert (await probe)["text"]
    assert len(fake_llm.requests()) == 2, "one probe at the provider while half-open"


# ---------------------------------------------------------------- an echoed key


@workflow.defn
async def echo_key_flow() -> str:
    return (await chat(_req(), retry_policy=FAST)).text


@activity.defn
async def quotes_the_key() -> str:
    raise ApplicationError(f"the gateway said: bad credentials {GATEWAY_KEY}", non_retryable=True)


@workflow.defn
async def user_activity_flow() -> str:
    return await workflow.execute_activity(quotes_the_key, start_to_close_timeout=10)


async def test_a_key_the_provider_echoes_is_stored_nowhere(client, start_worker, fake_llm, registry_reset,
                                                            monkeypatch, caplog, db_url):
    monkeypatch.setenv("GATEWAY_KEY", GATEWAY_KEY)
    fake_llm.expect_key(GATEWAY_KEY)
    configure_providers([fake_llm.provider_config(models=[PRIMARY], api_key_env="GATEWAY_KEY")])
    # vLLM-style: the error body repeats the presented key.
    fake_llm.script([f.status(401, body={"error": {"message": f"Incorrect API key provided: {GATEWAY_KEY}",
                                                   "type": "invalid_request_error"}})])
    caplog.set_level(logging.DEBUG)
    await start_worker(workflows=[echo_key_flow, user_activity_flow], activities=[quotes_the_key])
    handles = [await client.start(echo_key_flow, id="echo-key"), await client.start(user_activity_flow, id="quote")]
    for handle in handles:
        with pytest.raises(WorkflowFailure):
            await handle.result(timeout=30)
    assert fake_llm.requests()[0]["auth_ok"], "the key was presented"
    with psycopg.connect(db_url) as conn:
        stored = conn.execute("SELECT string_agg(data::text, ' ') FROM cairn.history").fetchone()[0] + \
            conn.execute("SELECT string_agg(coalesce(failure::text, ''), ' ') FROM cairn.runs").fetchone()[0]
    assert "Incorrect API key provided: ***" in stored
    assert "bad credentials ***" in stored
    shown = [json.dumps((await h.describe()).__dict__, default=str) for h in handles]
    cli_text = await cli(db_url, "history", "echo-key") + await cli(db_url, "describe", "echo-key", "--json")
    assert "***" in cli_text
    for text in (stored, *shown, cli_text, caplog.text):
        assert GATEWAY_KEY not in text


# ---------------------------------------------------------------- the per-call fallback policy


@workflow.defn
async def with_backup(after: int | None) -> dict:
    reply = await chat(_req(), fallback=Fallback([BACKUP], after_attempts=after), retry_policy=FAST)
    return {"model": reply.model, "attempt": reply.attempt, "skipped": reply.skipped}


@workflow.defn
async def no_context_fallback() -> dict:
    reply = await chat(_req(), fallback=Fallback([BACKUP], on_context_length=False), retry_policy=FAST)
    return {"model": reply.model}


@workflow.defn
async def with_backup_list() -> dict:
    reply = await chat(_req(), fallback=[BACKUP], retry_policy=FAST)
    return {"model": reply.model, "attempt": reply.attempt, "skipped": reply.skipped}


async def test_a_dead_primary_costs_a_call_two_attempts_not_the_breakers_window(client, start_worker, fake_llm,
                                                                                 registry_reset, db_url):
    """The defect: the fallback followed only the breaker, so a dead primary cost
    minimum_calls requests and burnt attempts before the backup served."""
    configure_providers([fake_llm.provider_config(models=[PRIMARY, BACKUP])])
    fake_llm.script([f.status(500, model=PRIMARY, times=100), f.ok("backup", model=BACKUP, times=100)])
    await start_worker(workflows=[with_backup, with_backup_list])
    out = await (await client.start(with_backup_list, id="dead-primary")).result(timeout=30)
    assert (out["model"], out["attempt"]) == (BACKUP, 3)
    assert out["skipped"] == [{"model": PRIMARY, "provider": None, "until": None,
                               "reason": "2 failed attempts of this call"}]
    assert [r["model"] for r in fake_llm.requests()] == [PRIMARY, PRIMARY, BACKUP]
    assert "2 failed attempts of this call" in await cli(db_url, "describe", "dead-primary")
    fake_llm.reset()
    fake_llm.script([f.status(500, model=PRIMARY, times=100), f.ok("backup", model=BACKUP, times=100)])
    one = await (await client.start(with_backup, 1, id="after-one")).result(timeout=30)
    assert (one["model"], one["attempt"]) == (BACKUP, 2)


def test_the_web_view_says_why_a_fallback_served():
    call = {"seq": 3, "provider": "fake", "model": BACKUP, "attempt": 3, "input_tokens": 10, "cached_input_tokens": 0,
            "output_tokens": 5, "cost_usd": None, "ttft_seconds": 0.0371234,
            "skipped": [{"model": PRIMARY, "provider": None, "until": None,
                         "reason": "2 failed attempts of this call"}]}
    html = pages._llm(SimpleNamespace(llm_totals={}, llm_calls=[call]))
    assert f"{PRIMARY}: 2 failed attempts of this call" in html
    assert "<td>0.037</td>" in html, "TTFT is shown in ms precision, not as a raw float"


async def test_a_prompt_too_long_moves_at_once_to_a_larger_window(client, start_worker, fake_llm, registry_reset):
    configure_providers([fake_llm.provider_config(models=[PRIMARY, BACKUP],
                                                  context_windows={PRIMARY: 64_000, BACKUP: 128_000})])
    fake_llm.script([f.context_too_long(model=PRIMARY), f.ok("fits", model=BACKUP)])
    await start_worker(workflows=[with_backup, no_context_fallback])
    out = await (await client.start(with_backup, None, id="too-long")).result(timeout=30)
    assert (out["model"], out["attempt"]) == (BACKUP, 1), "within the same attempt"
    assert out["skipped"][0]["reason"] == "context length exceeded (window 64000)"
    # Asked not to: the rejection stands.
    fake_llm.reset()
    fake_llm.script([f.context_too_long(model=PRIMARY)])
    with pytest.raises(WorkflowFailure, match="context"):
        await (await client.start(no_context_fallback, id="too-long-off")).result(timeout=30)
    # No model with a larger window: the rejection stands.
    configure_providers([fake_llm.provider_config(models=[PRIMARY, BACKUP],
                                                  context_windows={PRIMARY: 128_000, BACKUP: 64_000})])
    fake_llm.reset()
    fake_llm.script([f.context_too_long(model=PRIMARY)])
    with pytest.raises(WorkflowFailure, match="context"):
        await (await client.start(with_backup, None, id="too-long-2")).result(timeout=30)
    assert len(fake_llm.requests()) == 1


# ---------------------------------------------------------------- the providers config


def test_a_bad_providers_config_is_bad_input_and_inline_json_works(db_url, tmp_path, monkeypatch, registry_reset):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain_flows.py").write_text(
        "from cairn import workflow\n\n@workflow.defn\nasync def plain() -> int:\n    return 1\n")
    runner = CliRunner()
    for value, says in (("/nonexistent/providers.toml", "does not exist"),
                        ('{"providers": [{"name": "x"}]}', "inline JSON"),
                        ('[{"name": "x", "base_url": "ftp://nope"}]', "base_url")):
        monkeypatch.setenv("CAIRN_LLM_PROVIDERS", value)
        providers_mod._registry = None
        out = runner.invoke(main, ["--database-url", db_url, "worker", "-m", "plain_flows"])
        assert out.exit_code == 2, out.output
        assert says in out.output
        assert "Traceback" not in out.output
    inline = '{"providers": [{"name": "local", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]}]}'
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", inline)
    providers_mod._registry = None
    assert [p.name for p in providers_mod.configured_providers()] == ["local"]
