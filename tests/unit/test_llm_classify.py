"""Error classification, Retry-After parsing, price table and provider config: row by row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from cairn.errors import ConfigurationError, InputValidationError
from cairn.llm import (
    PRICES,
    ChatRequest,
    Price,
    ProviderConfig,
    ProviderError,
    Usage,
    classify,
    classify_status,
    configure_providers,
    cost,
    load_providers,
    parse_retry_after,
    provider_for,
)
from cairn.llm.providers import get_provider, resolve_provider

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def openai_error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}})


def anthropic_error(type_: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"type": type_, "message": message}})


QUOTA_OPENAI = openai_error("You exceeded your current quota, please check your plan and billing details.",
                            "insufficient_quota", "insufficient_quota")
CREDIT_ANTHROPIC = anthropic_error("invalid_request_error",
                                   "Your credit balance is too low to access the Anthropic API.")
CONTEXT_OPENAI = openai_error("This model's maximum context length is 128000 tokens. However, you requested 130000.",
                              code="context_length_exceeded")
CONTEXT_ANTHROPIC = anthropic_error("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")

# (status, headers, body) -> (kind, reason, retry_after)
ROWS = [
    pytest.param(429, {}, openai_error("Rate limit reached", "requests", "rate_limit_exceeded"),
                 "throttle", "rate_limit", None, id="429-rate-limit"),
    pytest.param(429, {"retry-after": "3"}, "", "throttle", "rate_limit", 3.0, id="429-retry-after"),
    pytest.param(503, {"retry-after": "5"}, "", "throttle", "overloaded", 5.0, id="503-with-retry-after"),
    pytest.param(503, {}, "", "retryable", "http_503", None, id="503-without-retry-after"),
    pytest.param(500, {}, "", "retryable", "http_500", None, id="500"),
    pytest.param(502, {}, "<html>bad gateway</html>", "retryable", "http_502", None, id="502-html"),
    pytest.param(504, {}, "", "retryable", "http_504", None, id="504"),
    pytest.param(529, {}, anthropic_error("overloaded_error", "Overloaded"), "retryable", "http_529", None,
                 id="529-anthropic-overloaded"),
    pytest.param(408, {}, "", "retryable", "http_408", None, id="408"),
    pytest.param(409, {}, "", "retryable", "http_409", None, id="409"),
    pytest.param(402, {}, "", "fatal", "quota", None, id="402"),
    pytest.param(429, {"retry-after": "1"}, QUOTA_OPENAI, "fatal", "quota", None, id="429-insufficient-quota"),
    pytest.param(403, {}, openai_error("billing_hard_limit_reached"), "fatal", "quota", None, id="403-billing"),
    pytest.param(400, {}, CREDIT_ANTHROPIC, "fatal", "quota", None, id="400-anthropic-credit-balance"),
    pytest.param(400, {}, openai_error("bad request"), "non_retryable", "http_400", None, id="400"),
    pytest.param(401, {}, openai_error("Incorrect API key provided"), "non_retryable", "http_401", None, id="401"),
    pytest.param(403, {}, "", "non_retryable", "http_403", None, id="403"),
    pytest.param(404, {}, "", "non_retryable", "http_404", None, id="404"),
    pytest.param(422, {}, "", "non_retryable", "http_422", None, id="422"),
    pytest.param(400, {}, CONTEXT_OPENAI, "non_retryable", "context_length", None, id="400-context-length"),
    pytest.param(400, {}, CONTEXT_ANTHROPIC, "non_retryable", "context_length", None, id="400-prompt-too-long"),
    pytest.param(500, {}, CONTEXT_OPENAI, "non_retryable", "context_length", None, id="500-context-length"),
    pytest.param(500, {"x-should-retry": "false"}, "", "non_retryable", "http_500", None, id="500-should-retry-false"),
    pytest.param(429, {"x-should-retry": "false"}, "", "non_retryable", "http_429", None, id="429-should-retry-false"),
    pytest.param(400, {"x-should-retry": "true"}, "", "retryable", "http_400", None, id="400-should-retry-true"),
    pytest.param(404, {"X-Should-Retry": "TRUE"}, "", "retryable", "http_404", None, id="404-should-retry-case"),
    pytest.param(429, {"x-should-retry": "true", "retry-after-ms": "250"}, "", "throttle", "rate_limit", 0.25,
                 id="429-should-retry-true-stays-throttle"),
]


@pytest.mark.parametrize(("status", "headers", "body", "kind", "reason", "retry_after"), ROWS)
def test_classify_status(status, headers, body, kind, reason, retry_after):
    c = classify_status(status, headers, body, now=NOW)
    assert (c.kind, c.reason, c.retry_after) == (kind, reason, retry_after)


@pytest.mark.parametrize(("headers", "expected"), [
    pytest.param({"retry-after": "7"}, 7.0, id="seconds"),
    pytest.param({"Retry-After": "0.5"}, 0.5, id="fractional-seconds"),
    pytest.param({"retry-after": "-3"}, 0.0, id="negative-clamped"),
    pytest.param({"retry-after": format_datetime(NOW + timedelta(seconds=30), usegmt=True)}, 30.0, id="http-date"),
    pytest.param({"retry-after": format_datetime(NOW - timedelta(seconds=30), usegmt=True)}, 0.0, id="date-in-past"),
    pytest.param({"retry-after-ms": "1500"}, 1.5, id="ms"),
    pytest.param({"retry-after-ms": "20", "retry-after": "9"}, 0.02, id="ms-wins"),
    pytest.param({"retry-after-ms": "soon", "retry-after": "9"}, 9.0, id="bad-ms-falls-back"),
    pytest.param({"retry-after": "tomorrow-ish"}, None, id="garbage"),
    pytest.param({}, None, id="absent"),
])
def test_parse_retry_after(headers, expected):
    assert parse_retry_after(headers, now=NOW) == expected


@pytest.mark.parametrize(("exc", "kind", "reason"), [
    (httpx.ConnectTimeout("x"), "retryable", "timeout"),
    (httpx.ReadTimeout("x"), "retryable", "timeout"),
    (httpx.PoolTimeout("x"), "retryable", "timeout"),
    (httpx.ConnectError("refused"), "retryable", "connection"),
    (httpx.ReadError("reset"), "retryable", "connection"),
    (httpx.RemoteProtocolError("incomplete chunked read"), "retryable", "truncated"),
    (httpx.UnsupportedProtocol("ftp"), "non_retryable", "bad_url"),
    (ConnectionResetError(), "retryable", "connection"),
])
def test_classify_transport(exc, kind, reason):
    c = classify.classify_transport(exc)
    assert (c.kind, c.reason) == (kind, reason)


def test_classify_transport_refuses_other_errors():
    with pytest.raises(TypeError):
        classify.classify_transport(ValueError("not transport"))


@pytest.mark.parametrize(("type_", "message", "kind"), [
    ("overloaded_error", "Overloaded", "retryable"),
    ("api_error", "Internal", "retryable"),
    ("rate_limit_error", "slow down", "throttle"),
    ("invalid_request_error", "prompt is too long: 300000 tokens", "non_retryable"),
    ("invalid_request_error", "Your credit balance is too low", "fatal"),
    ("authentication_error", "bad key", "non_retryable"),
])
def test_classify_stream_error(type_, message, kind):
    assert classify.classify_stream_error(type_, message).kind == kind


def test_the_other_conditions_are_retryable():
    for c in (classify.truncated_stream(), classify.malformed_body("JSON body"), classify.ttft_exceeded(2),
              classify.total_timeout(9), classify.invalid_output()):
        assert c.kind == "retryable"
    assert "time to first token exceeded" in classify.ttft_exceeded(2).message


def test_excerpt_is_short_single_line_and_sanitized():
    body = openai_error("Incorrect API key provided: sk-abcd1234efgh5678. You can find your key at\n\nhttps://x",
                        code="invalid_api_key")
    text = classify.error_excerpt(body)
    assert "sk-abcd" not in text
    assert "***" in text
    assert "\n" not in text
    assert "Incorrect API key provided" in text
    long = classify.error_excerpt("x " * 1000)
    assert len(long) <= classify.EXCERPT_CHARS
    assert "S3CRET" not in classify.error_excerpt("echo S3CRET here", secrets=["S3CRET"])
    assert classify.error_excerpt("Bearer abc.def") == "***"


def test_provider_error_message_and_pickling():
    import pickle

    e = ProviderError("throttle", "slow down", provider="ds", model="deepseek-chat", status=429, retry_after=2.0,
                      reason="rate_limit")
    assert str(e) == "ds/deepseek-chat: throttle (HTTP 429, retry after 2 s): slow down"
    back = pickle.loads(pickle.dumps(e))
    assert (back.kind, back.status, back.retry_after, back.reason, str(back)) == (
        "throttle", 429, 2.0, "rate_limit", str(e))


# ---------------------------------------------------------------- pricing


def test_cost_from_the_table_with_cached_tokens():
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=400_000, output_tokens=100_000)
    # gpt-4o-mini: 0.15 in, 0.075 cached, 0.60 out (per million)
    assert cost(usage, "gpt-4o-mini") == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.1 * 0.60)
    # a dated snapshot resolves to the longest known prefix, not to gpt-4o
    assert cost(usage, "gpt-4o-mini-2024-07-18") == cost(usage, "gpt-4o-mini")
    assert cost(usage, "claude-3-5-haiku-20241022") == cost(usage, "claude-3-5-haiku")
    assert cost(usage, "gpt-4o") != cost(usage, "gpt-4o-mini")


def test_cost_unknown_is_none_never_zero():
    usage = Usage(input_tokens=10, output_tokens=10)
    assert cost(usage, "llama3.1:8b") is None
    assert cost(None, "gpt-4o") is None


def test_provider_price_overrides_win():
    cfg = ProviderConfig(name="local", base_url="http://127.0.0.1:1/v1",
                         prices={"llama3.1:8b": Price(input=1, output=2), "gpt-4o": {"input": 0, "output": 0}})
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=500_000, output_tokens=1_000_000)
    assert cost(usage, "llama3.1:8b", cfg) == pytest.approx(3.0)  # cached priced as input when unset
    assert cost(usage, "gpt-4o", cfg) == 0.0
    assert set(PRICES) >= {"gpt-4o", "gpt-4o-mini", "deepseek-chat", "claude-3-5-sonnet", "claude-3-5-haiku"}


# ---------------------------------------------------------------- configuration

LITERAL = "sk-live-DO-NOT-ECHO-1234567890"


@pytest.mark.parametrize("entry", [
    {"name": "ds", "base_url": "https://api.deepseek.com/v1", "api_key": LITERAL},
    {"name": "ds", "base_url": "https://api.deepseek.com/v1", "api_key_env": LITERAL},
    {"name": "ds", "base_url": "https://api.deepseek.com/v1", "apiKey": LITERAL},
    {"name": "ds", "base_url": "https://api.deepseek.com/v1", "models": ["x"], "headers": LITERAL},
])
def test_config_refuses_a_literal_key_without_echoing_it(entry):
    with pytest.raises(InputValidationError) as info:
        ProviderConfig.model_validate(entry)
    assert LITERAL not in str(info.value)
    assert "DO-NOT-ECHO" not in repr(info.value)
    assert "environment variable" in str(info.value) or "unknown setting" in str(info.value)


def test_config_wants_an_env_var_name():
    with pytest.raises(InputValidationError, match="NAME of an environment variable"):
        ProviderConfig(name="x", base_url="http://h/v1", api_key_env="not a name!")
    cfg = ProviderConfig(name="x", base_url="http://h/v1/", api_key_env="DEEPSEEK_API_KEY")
    assert cfg.base_url == "http://h/v1"


def test_load_providers_toml_and_json(tmp_path):
    toml = tmp_path / "providers.toml"
    toml.write_text(
        '[[providers]]\nname = "deepseek"\nbase_url = "https://api.deepseek.com/v1"\n'
        'api_key_env = "DEEPSEEK_API_KEY"\nmodels = ["deepseek-chat"]\nttft_timeout = 10\n'
        '[providers.prices.deepseek-chat]\ninput = 0.1\noutput = 0.2\n'
        '[[providers]]\nname = "claude"\nbase_url = "https://api.anthropic.com/v1"\ndialect = "anthropic"\n'
        'api_key_env = "ANTHROPIC_API_KEY"\nmodels = ["claude-3-5-haiku-latest"]\n')
    loaded = load_providers(toml)
    assert [p.name for p in loaded] == ["deepseek", "claude"]
    assert loaded[0].ttft_timeout == 10
    assert loaded[0].prices["deepseek-chat"].output == 0.2
    js = tmp_path / "providers.json"
    js.write_text(json.dumps({"providers": {"local": {"base_url": "http://localhost:11434/v1", "models": ["qwen"]}}}))
    assert load_providers(js)[0].name == "local"


def test_load_providers_refuses_literal_key_in_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(f'[[providers]]\nname = "ds"\nbase_url = "https://x/v1"\napi_key = "{LITERAL}"\n')
    with pytest.raises(ConfigurationError) as info:
        load_providers(path)
    assert LITERAL not in str(info.value)
    assert "api_key_env" in str(info.value)


def test_load_providers_bad_files(tmp_path):
    with pytest.raises(ConfigurationError, match="no such file"):
        load_providers(tmp_path / "missing.toml")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_providers(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[providers]]\nname = "x"\nbase_url = "ftp://x"\ntimeout = -1\n')
    with pytest.raises(ConfigurationError, match="base_url") as info:
        load_providers(wrong)
    assert "timeout" in str(info.value)


def test_provider_for_lists_known_models(monkeypatch):
    from cairn.llm import providers

    monkeypatch.setattr(providers, "_registry", None)  # restored after the test
    configure_providers([
        ProviderConfig(name="ds", base_url="https://api.deepseek.com/v1", models=["deepseek-chat"]),
        ProviderConfig(name="oa", base_url="https://api.openai.com/v1", models=["gpt-4o-mini"]),
    ])
    try:
        assert provider_for("gpt-4o-mini").name == "oa"
        assert resolve_provider(ChatRequest(model="gpt-4o-mini", messages=[], provider="ds")).name == "ds"
        with pytest.raises(ConfigurationError) as info:
            provider_for("gpt-5")
        assert "gpt-5" in str(info.value)
        assert "deepseek-chat" in str(info.value)
        assert "gpt-4o-mini" in str(info.value)
        with pytest.raises(ConfigurationError, match="known providers: ds, oa"):
            get_provider("nope")
        with pytest.raises(InputValidationError, match="unique"):
            configure_providers([ProviderConfig(name="a", base_url="http://h"),
                                 ProviderConfig(name="a", base_url="http://h")])
    finally:
        monkeypatch.setattr(providers, "_registry", None)


def test_providers_from_the_environment(tmp_path, monkeypatch):
    from cairn.llm import providers

    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"name": "env", "base_url": "http://h/v1", "models": ["m"]}]))
    monkeypatch.setattr(providers, "_registry", None)
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", str(path))
    assert provider_for("m").name == "env"
