"""The fake provider's storm mode over real HTTP: the log says why each request got its
answer, the script still wins over the storm, other processes set the storm with
``POST /_fake/storm``, and ``cairn fake-llm`` takes the storm's flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cairn.llm import ChatRequest, ProviderError, call_chat
from cairn.llm import fake as f

CAIRN = str(Path(sys.executable).parent / "cairn")


def request(key: str) -> ChatRequest:
    return ChatRequest(model="fake-model", messages=[{"role": "user", "content": f"call {key}: hi"}])


async def outcome(provider, key: str) -> tuple[str, float | None]:
    try:
        await call_chat(provider, request(key))
    except ProviderError as e:
        return e.kind, e.retry_after
    return "ok", None


async def test_storm_log_and_classification(fake_llm):
    fake_llm.storm(failure_rate=0.5, burst_every=60, burst_first=0, burst_seconds=0.4, seed=3)
    provider = fake_llm.provider_config()
    first = await outcome(provider, "a")
    assert first[0] == "throttle"
    assert 0 < first[1] <= 0.4  # retry-after-ms: to the burst's end
    [entry] = fake_llm.requests()
    assert (entry["status"], entry["why"], entry["call"]) == (429, "burst", "a")
    assert entry["headers"]["content-type"] == "application/json"
    while fake_llm.requests()[-1]["why"] == "burst":
        await outcome(provider, "a")
    kinds = [await outcome(provider, f"k{i}") for i in range(20)]
    log = [r for r in fake_llm.requests() if r["why"] != "burst"]
    assert {r["why"] for r in log} == {"ok", "fail"}
    assert all((r["status"], r["why"]) in {(200, "ok"), (500, "fail")} for r in log)
    assert [k for k, _ in kinds].count("retryable") == sum(1 for r in log if r["call"] != "a" and r["why"] == "fail")


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_rpm_refusals_carry_the_wait(fake_llm, dialect):
    fake_llm.storm(rpm=2, rpm_window=30)
    provider = fake_llm.provider_config(dialect=dialect)
    got = [await outcome(provider, f"r{i}") for i in range(3)]
    assert [k for k, _ in got] == ["ok", "ok", "throttle"]
    assert 29 < got[2][1] <= 30
    assert [r["why"] for r in fake_llm.requests()] == ["ok", "ok", "rpm"]


async def test_script_steps_come_before_the_storm(fake_llm):
    fake_llm.script([f.ok("scripted")], default=f.ok("storm's ok"))
    fake_llm.storm(failure_rate=1.0)
    provider = fake_llm.provider_config()
    assert (await call_chat(provider, request("s"))).text == "scripted"
    assert (await outcome(provider, "s"))[0] == "retryable"
    fake_llm.storm(None)  # ends it: the default answers again
    assert (await call_chat(provider, request("s"))).text == "storm's ok"
    assert [r["why"] for r in fake_llm.requests()] == ["script", "fail", "ok"]
    fake_llm.reset()
    assert fake_llm.provider._storm is None


async def test_storm_over_http(fake_llm):
    async with httpx.AsyncClient() as http:
        bad = await http.post(f"{fake_llm.root}/_fake/storm", json={"failure_rate": 2})
        assert bad.status_code == 400
        ok = await http.post(f"{fake_llm.root}/_fake/storm", json={"failure_rate": 1, "failure_status": 503})
        assert ok.json()["storm"]["failure_status"] == 503
        assert (await outcome(fake_llm.provider_config(), "h"))[0] == "retryable"
        off = await http.post(f"{fake_llm.root}/_fake/storm", json=None)
        assert off.json() == {"storm": None}
        assert (await outcome(fake_llm.provider_config(), "h"))[0] == "ok"
        log = (await http.get(f"{fake_llm.root}/_fake/log")).json()
    assert [(r["status"], r["why"], r["call"]) for r in log] == [(503, "fail", "h"), (200, "ok", "h")]


def test_fake_llm_command_storm_flags():
    with subprocess.Popen([CAIRN, "fake-llm", "--json", "--failure-rate", "1", "--failure-status", "502",
                           "--rpm", "1", "--rpm-window", "60", "--seed", "4", "--burst-every", "600",
                           "--burst-first", "300"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert (info["storm"]["rpm"], info["storm"]["burst_first"]) == (1, 300)
            body = {"model": "m", "messages": [{"role": "user", "content": "call c1"}]}
            statuses = [httpx.post(f"{info['url']}/chat/completions", json=body) for _ in range(2)]
            assert [r.status_code for r in statuses] == [502, 429]
            assert 59 <= float(statuses[1].headers["retry-after-ms"]) / 1000 <= 60
            log = httpx.get(info["log"]).json()
            assert [(r["why"], r["call"]) for r in log] == [("fail", "c1"), ("rpm", "c1")]
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("flag", ["--failure-rate", "--failure-status", "--burst-every", "--burst-seconds",
                                  "--burst-first", "--rpm", "--rpm-window", "--seed"])
def test_fake_llm_help_lists_storm_flags(flag):
    from click.testing import CliRunner

    from cairn.cli import main

    assert flag in CliRunner().invoke(main, ["fake-llm", "--help"]).output
