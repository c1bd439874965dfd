"""The provider layer over real HTTP against the fake provider: both dialects, JSON and
streams, every fault the fake can play, and the API key kept out of everything."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cairn.cli import main
from cairn.llm import ChatRequest, ProviderConfig, ProviderError, ToolCall, call_chat
from cairn.llm import fake as f

DIALECTS = ["openai", "anthropic"]
MODEL = "gpt-4o-mini"  # priced in the table, so cost is computed
CAIRN = str(Path(sys.executable).parent / "cairn")


def request(stream: bool = False, **extra) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Say hi"}], stream=stream, **extra)


async def failing(provider, req=None, **kw) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await call_chat(provider, req or request(), **kw)
    return info.value


# ---------------------------------------------------------------- success


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_success_fills_the_completion(fake_llm, dialect, stream):
    tool = ToolCall(id="call_1", name="lookup", arguments='{"city": "Paris"}')
    fake_llm.script([f.ok("Bonjour tout le monde", tool_calls=[tool], input_tokens=100, cached_input_tokens=40,
                          output_tokens=7, served_model=f"{MODEL}-2024-07-18")])
    provider = fake_llm.provider_config(dialect=dialect, models=[MODEL])
    chunks: list[str] = []
    c = await call_chat(provider, request(stream), on_chunk=chunks.append if stream else None)
    assert c.text == "Bonjour tout le monde"
    assert c.tool_calls == [tool]
    assert c.finish_reason == ("tool_calls" if dialect == "openai" else "tool_use")
    assert c.model == f"{MODEL}-2024-07-18"
    assert c.provider == "fake"
    assert c.request_id == "req_fake_1"
    assert c.usage is not None
    assert (c.usage.input_tokens, c.usage.cached_input_tokens, c.usage.output_tokens) == (100, 40, 7)
    assert c.usage.cost_usd == pytest.approx((60 * 0.15 + 40 * 0.075 + 7 * 0.60) / 1e6)
    assert c.ttft_seconds is not None
    assert 0 <= c.ttft_seconds <= c.duration_seconds
    if stream:
        assert chunks == ["Bonjour", " tout", " le", " monde"]
    # The fake notes "finished" after its handler returns, which may be just after the
    # client has read the last byte: wait for it (the log lives in the server's thread).
    deadline = time.monotonic() + 5
    while not fake_llm.requests()[0]["finished"] and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    [logged] = fake_llm.requests()
    assert logged["stream"] is stream
    assert logged["outcome"] == "ok"
    assert logged["finished"]
    body = logged["body"]
    if dialect == "anthropic":
        assert logged["path"] == "/v1/messages"
        assert body["system"] == "Be brief."
        assert logged["headers"]["anthropic-version"] == "2023-06-01"
    else:
        assert logged["path"] == "/v1/chat/completions"
        assert body.get("stream_options") == ({"include_usage": True} if stream else None)


async def test_async_on_chunk_and_body_id_without_header(fake_llm):
    fake_llm.script([f.ok("one two", request_id_header=False)])
    seen: list[str] = []

    async def on_chunk(text: str) -> None:
        seen.append(text)

    c = await call_chat(fake_llm.provider_config(), request(), on_chunk=on_chunk)
    assert seen == ["one", " two"]
    assert c.request_id == "chatcmpl-fake-1"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_missing_usage_is_unknown_not_guessed(fake_llm, dialect, stream):
    fake_llm.script([f.missing_usage(text="no counts")])
    c = await call_chat(fake_llm.provider_config(dialect=dialect), request(stream))
    assert c.text == "no counts"
    assert c.usage is None


# ---------------------------------------------------------------- status codes end to end


def in_30s() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("headers", "low", "high"), [
    pytest.param({"retry-after": "7"}, 7, 7, id="seconds"),
    pytest.param({"retry-after": "date"}, 25, 30, id="http-date"),
    pytest.param({"retry-after-ms": "1500"}, 1.5, 1.5, id="ms"),
    pytest.param({"retry-after-ms": "250", "retry-after": "9"}, 0.25, 0.25, id="ms-wins"),
])
async def test_429_retry_after_forms(fake_llm, dialect, headers, low, high):
    headers = {k: (in_30s() if v == "date" else v) for k, v in headers.items()}
    fake_llm.script([f.rate_limited(None, headers=headers)])
    e = await failing(fake_llm.provider_config(dialect=dialect))
    assert (e.kind, e.status, e.reason) == ("throttle", 429, "rate_limit")
    assert e.retry_after is not None
    assert low <= e.retry_after <= high


@pytest.mark.parametrize(("step", "kind", "status"), [
    pytest.param(f.status(503, headers={"retry-after": "2"}), "throttle", 503, id="503-retry-after"),
    pytest.param(f.status(503), "retryable", 503, id="503"),
    pytest.param(f.status(500), "retryable", 500, id="500"),
    pytest.param(f.status(502, body="<html>Bad Gateway</html>"), "retryable", 502, id="502-html"),
    pytest.param(f.status(402), "fatal", 402, id="402"),
    pytest.param(f.quota_exhausted(), "fatal", 429, id="429-insufficient-quota"),
    pytest.param(f.context_too_long(), "non_retryable", 400, id="context-length"),
    pytest.param(f.status(401), "non_retryable", 401, id="401"),
    pytest.param(f.status(404), "non_retryable", 404, id="404"),
    pytest.param(f.status(422), "non_retryable", 422, id="422"),
    pytest.param(f.status(500, headers={"x-should-retry": "false"}), "non_retryable", 500, id="500-should-retry-false"),
    pytest.param(f.status(400, headers={"x-should-retry": "true"}), "retryable", 400, id="400-should-retry-true"),
])
async def test_status_classification_end_to_end(fake_llm, step, kind, status):
    fake_llm.script([step])
    e = await failing(fake_llm.provider_config())
    assert (e.kind, e.status) == (kind, status)
    assert str(e).startswith(f"fake/{MODEL}: {kind} (HTTP {status}")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_anthropic_credit_and_prompt_too_long(fake_llm, stream):
    fake_llm.script([
        f.status(400, body={"type": "error", "error": {"type": "invalid_request_error",
                            "message": "Your credit balance is too low to access the Anthropic API."}}),
        f.status(400, body={"type": "error", "error": {"type": "invalid_request_error",
                            "message": "prompt is too long: 250000 tokens > 200000 maximum"}}),
    ])
    provider = fake_llm.provider_config(dialect="anthropic")
    assert (await failing(provider, request(stream))).kind == "fatal"
    e = await failing(provider, request(stream))
    assert (e.kind, e.reason) == ("non_retryable", "context_length")
    assert "prompt is too long" in e.message


# ---------------------------------------------------------------- time and broken answers


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_keepalive_then_answer_within_ttft_passes(fake_llm, dialect, stream):
    # Keep-alives arrive at once and keep coming for 0.6 s; the first token at ~0.6 s is
    # inside the 3 s TTFT limit, so the call succeeds and reports the real TTFT.
    fake_llm.script([f.keepalive_then_ok(0.6, interval=0.1)])
    c = await call_chat(fake_llm.provider_config(dialect=dialect, ttft_timeout=3.0), request(stream))
    assert c.text == "Hello from the fake provider."
    assert c.ttft_seconds is not None
    assert c.ttft_seconds >= 0.55


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_keepalive_bytes_do_not_count_as_first_token(fake_llm, dialect, stream):
    # Bytes keep flowing (so the read timeout never fires) but no token comes in time.
    fake_llm.script([f.keepalive_then_ok(5.0, interval=0.1)])
    e = await failing(fake_llm.provider_config(dialect=dialect, ttft_timeout=0.5), request(stream))
    assert (e.kind, e.reason) == ("retryable", "ttft")
    assert "time to first token exceeded" in str(e)


async def test_hang_before_headers_trips_ttft(fake_llm):
    fake_llm.script([f.hang()])
    started = time.monotonic()
    e = await failing(fake_llm.provider_config(ttft_timeout=0.4))
    assert (e.kind, e.reason, e.status) == ("retryable", "ttft", None)
    assert time.monotonic() - started < 3


async def test_hang_before_headers_hits_the_read_timeout(fake_llm):
    fake_llm.script([f.hang()])
    e = await failing(fake_llm.provider_config(read_timeout=0.4))
    assert (e.kind, e.reason) == ("retryable", "timeout")
    # the fake saw the request and saw the client go away
    deadline = time.monotonic() + 5
    while "went away" not in fake_llm.requests()[0]["outcome"] and time.monotonic() < deadline:  # noqa: ASYNC110  (the log lives in another thread: poll it with a deadline)
        await asyncio.sleep(0.05)
    assert fake_llm.requests()[0]["outcome"] == "hang (client went away)"


async def test_slow_stream_hits_the_total_timeout_after_first_token(fake_llm):
    fake_llm.script([f.slow_stream(0.3, text="a b c d e f g h i j")])
    e = await failing(fake_llm.provider_config(timeout=1.0, ttft_timeout=0.5), request(stream=True))
    assert (e.kind, e.reason) == ("retryable", "timeout")
    assert "total timeout" in str(e)


async def test_slow_stream_within_limits_succeeds(fake_llm):
    fake_llm.script([f.slow_stream(0.05, text="a b c d")])
    c = await call_chat(fake_llm.provider_config(ttft_timeout=1.0, timeout=5.0), request(stream=True))
    assert c.text == "a b c d"
    assert c.duration_seconds - (c.ttft_seconds or 0) >= 0.1


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_drop_mid_stream_is_retryable(fake_llm, dialect, stream):
    fake_llm.script([f.drop_mid_stream(1 if not stream else 3)])
    chunks: list[str] = []
    e = await failing(fake_llm.provider_config(dialect=dialect), request(stream),
                      on_chunk=chunks.append if stream else None)
    assert (e.kind, e.reason) == ("retryable", "truncated")
    assert fake_llm.requests()[0]["outcome"].startswith("dropped after")


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_malformed_json_is_retryable(fake_llm, dialect, stream):
    fake_llm.script([f.malformed_json()])
    e = await failing(fake_llm.provider_config(dialect=dialect), request(stream))
    assert (e.kind, e.reason) == ("retryable", "malformed")


async def test_connection_refused_is_retryable(fake_llm):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = fake_llm.provider_config().model_copy(update={"base_url": f"http://127.0.0.1:{port}/v1"})
    e = await failing(provider)
    assert (e.kind, e.reason) == ("retryable", "connection")


async def test_validate_predicate_rejects_output(fake_llm):
    fake_llm.script([f.ok("not json"), f.ok('{"a": 1}')])
    provider = fake_llm.provider_config()

    def is_json(c) -> bool:
        try:
            json.loads(c.text)
        except ValueError:
            return False
        return True

    e = await failing(provider, validate=is_json)
    assert (e.kind, e.reason) == ("retryable", "invalid_output")
    assert (await call_chat(provider, request(), validate=is_json)).text == '{"a": 1}'


async def test_missing_key_env_is_non_retryable_and_sends_nothing(fake_llm, monkeypatch):
    monkeypatch.delenv("CAIRN_TEST_NO_SUCH_KEY", raising=False)
    e = await failing(fake_llm.provider_config(api_key_env="CAIRN_TEST_NO_SUCH_KEY"))
    assert (e.kind, e.reason) == ("non_retryable", "no_key")
    assert "CAIRN_TEST_NO_SUCH_KEY" in str(e)
    assert fake_llm.requests() == []


# ---------------------------------------------------------------- the script


async def test_script_per_model_default_and_fail_always(fake_llm):
    fake_llm.script([f.status(500, model="b"), f.rate_limited("1", times=2)], default=f.status(503))
    a = fake_llm.provider_config(models=["a", "b"])

    async def kind(model: str) -> str:
        try:
            await call_chat(a, ChatRequest(model=model, messages=[{"role": "user", "content": "x"}]))
        except ProviderError as e:
            return f"{e.kind} {e.status}"
        return "ok"

    assert [await kind("a"), await kind("a"), await kind("a"), await kind("b"), await kind("b")] == [
        "throttle 429", "throttle 429", "retryable 503", "retryable 500", "retryable 503"]
    assert [r["model"] for r in fake_llm.requests()] == ["a", "a", "a", "b", "b"]
    fake_llm.reset()
    assert fake_llm.requests() == []
    assert await kind("a") == "ok"


def test_log_and_script_over_http_from_another_process(fake_llm):
    # Another process loads a script over HTTP and calls the fake; this one reads the log over HTTP.
    code = textwrap.dedent(f"""
        import asyncio, httpx
        from cairn.llm import ChatRequest, ProviderConfig, ProviderError, call_chat
        httpx.post("{fake_llm.root}/_fake/script",
                   json={{"steps": [{{"kind": "status", "status": 429, "headers": {{"retry-after": "1"}}}}]}}
                  ).raise_for_status()
        p = ProviderConfig(name="sub", base_url="{fake_llm.url}")
        r = ChatRequest(model="m", messages=[{{"role": "user", "content": "from a subprocess"}}])
        async def go():
            try:
                await call_chat(p, r)
            except ProviderError as e:
                print(e.kind)
            print((await call_chat(p, r)).text)
        asyncio.run(go())
    """)
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["throttle", "Hello", "from", "the", "fake", "provider."]
    log = httpx.get(f"{fake_llm.root}/_fake/log").json()
    assert [r["outcome"] for r in log] == ["status 429", "ok"]
    assert log[0]["body"]["messages"][0]["content"] == "from a subprocess"
    assert httpx.post(f"{fake_llm.root}/_fake/script", json={"steps": [{"kind": "nope"}]}).status_code == 400
    assert httpx.post(f"{fake_llm.root}/_fake/reset").status_code == 200
    assert httpx.get(f"{fake_llm.root}/_fake/log").json() == []


# ---------------------------------------------------------------- the key


async def test_canary_key_goes_nowhere_but_the_auth_header(fake_llm, monkeypatch, caplog):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("CAIRN_TEST_CANARY_KEY", canary)
    fake_llm.expect_key(canary)
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"Incorrect API key provided: {canary}.", "type": "invalid_request_error"}}
    fake_llm.script([
        f.ok("fine"), f.rate_limited("1"), f.status(500), f.status(401, body=echo), f.status(400, body=f"raw {canary}"),
        f.drop_mid_stream(2), f.malformed_json(), f.hang(), f.ok("streamed")])
    texts: list[str] = []
    dumps: list[str] = []
    for dialect in DIALECTS:
        provider = fake_llm.provider_config(dialect=dialect, api_key_env="CAIRN_TEST_CANARY_KEY", ttft_timeout=0.5)
        dumps += [repr(provider), str(provider.model_dump()), provider.model_dump_json()]
        for i in range(9):
            req = request(stream=i >= 5)
            dumps += [repr(req), req.model_dump_json()]
            try:
                c = await call_chat(provider, req)
            except ProviderError as e:
                texts += [str(e), repr(e), e.message, "".join(traceback.format_exception(e)),
                          pickle.dumps(e).decode("latin-1")]
            else:
                dumps += [repr(c), c.model_dump_json()]
        fake_llm.script([f.ok("fine"), f.rate_limited("1"), f.status(500), f.status(401, body=echo),
                         f.status(400, body=f"raw {canary}"), f.drop_mid_stream(2), f.malformed_json(), f.hang(),
                         f.ok("streamed")])
    assert len(texts) == 2 * 7 * 5
    everything = "\n".join(texts + dumps + [caplog.text] + [r.getMessage() for r in caplog.records])
    assert canary not in everything
    assert canary[len("sk-canary-"):] not in everything
    log = fake_llm.requests()
    assert len(log) == 18
    assert all(r["auth_present"] and r["auth_ok"] for r in log)  # the key did arrive, every time
    assert canary not in json.dumps(log)


# ---------------------------------------------------------------- cairn fake-llm


def test_fake_llm_help():
    ran = CliRunner().invoke(main, ["fake-llm", "--help"])
    assert ran.exit_code == 0
    for option in ("--port", "--script", "--json", "--key-env"):
        assert option in ran.output


def test_fake_llm_bad_script_is_bad_input(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text('[{"kind": "explode"}]')
    ran = CliRunner().invoke(main, ["fake-llm", "--script", str(bad)])
    assert ran.exit_code == 2
    assert "bad script" in ran.output


def test_fake_llm_command_answers_a_request(tmp_path, monkeypatch):
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"steps": [{"kind": "status", "status": 429, "headers": {"retry-after-ms": "100"}}],
                                  "default": {"kind": "ok", "text": "from the command"}}))
    env = {**os.environ, "FAKE_KEY": "sk-fake-cli-key"}
    with subprocess.Popen([CAIRN, "fake-llm", "--port", "0", "--json", "--script", str(script),
                           "--key-env", "FAKE_KEY"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            monkeypatch.setenv("FAKE_KEY", "sk-fake-cli-key")
            provider = ProviderConfig(name="cli", base_url=info["url"], api_key_env="FAKE_KEY")
            e = asyncio.run(failing(provider))
            assert (e.kind, e.retry_after) == ("throttle", 0.1)
            assert asyncio.run(call_chat(provider, request())).text == "from the command"
            log = httpx.get(info["log"]).json()
            assert [(r["outcome"], r["auth_ok"]) for r in log] == [("status 429", True), ("ok", True)]
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
