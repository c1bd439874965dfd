"""``cairn.llm.chat`` through worker PROCESSES against a mock server this team did not write:
LLMock (PyPI ``llmock``, "chaos engineering for LLM apps"), run as ``llmock serve`` on
127.0.0.1, a peer of Cairn's own fake. What it can do, asserted from its request journal
(``GET /_llmock/requests``), its own resilience verdict (``GET /_llmock/verdict``) and the
database:

- plain completions (JSON and streamed) parse: text, usage, the served model;
- scripted faults (500s, 429 and 503 with Retry-After, added latency) are handled: every
  workflow completes, no call is answered 200 twice, a throttle burns no attempt (the
  recorded ``attempt`` counts the 500s only) and the next request of a throttled call
  waits out its Retry-After;
- its random chaos (a 30 % rate of 500s, unseeded) and its RPM quota (a refilling bucket
  that answers 429 with the real wait) are survived the same way.

LLMock cannot seed its random errors, so the random test asserts only what holds for any
draw. Skipped only when ``llmock`` cannot be imported (it is in the dev extras).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from typing import Any

import llm_flows as lf
import pytest
from acceptance_support import providers_file, start_runs
from llmock_support import LEASE_SECONDS, Mock

from cairn.llm.fake import call_key
from support import query, resolved, wait_for

pytest.importorskip("llmock", reason="llmock (dev extras) is not installed")

pytestmark = pytest.mark.acceptance

THROTTLES = (429, 503)  # LLMock sends Retry-After with both: Cairn reschedules, burning no attempt


def results(db_url: str) -> dict[str, dict[str, Any]]:
    """Each call's recorded chat result, by the call key of its request (its messages
    resolved: a message over 256 bytes is recorded as a payload-store reference)."""
    rows = query(db_url, """
        SELECT s.data, c.data FROM cairn.history s JOIN cairn.history c
          ON c.run_id = s.run_id AND c.type = 'ActivityCompleted' AND (c.data->>'activity_seq')::int = s.seq
        WHERE s.type = 'ActivityScheduled'""")
    found = {}
    for scheduled, completed in rows:
        messages = resolved(db_url, scheduled["input"][0]["request"]["messages"])
        found[call_key({"messages": messages})] = completed["result"]
    return found


def check_calls(db_url: str, mock: Mock, keys: list[str]) -> list[dict[str, Any]]:
    """Every call completed once; throttles burned no attempt and were waited out."""
    log = mock.requests()
    by_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in log:
        by_call[r["call"]].append(r)
    assert sorted(by_call) == sorted(keys), "every request carried a known call key"
    paid = Counter(r["call"] for r in log if r["status"] == 200)
    assert all(paid[k] == 1 for k in keys), f"calls answered 200 other than once: {paid}"
    recorded = results(db_url)
    for key, reqs in by_call.items():
        failures = sum(1 for r in reqs if r["status"] >= 500 and r["status"] not in THROTTLES)
        assert recorded[key]["attempt"] == 1 + failures, (
            f"call {key}: attempt {recorded[key]['attempt']} after {[r['status'] for r in reqs]}: "
            "a throttle burned an attempt")
        for before, after in itertools.pairwise(reqs):
            if before["status"] in THROTTLES and before["retry_after"] is not None:
                waited = after["started_at"] - before["started_at"]
                assert waited >= before["retry_after"], (
                    f"call {key}: retried {waited:.3f} s after a {before['status']} asking for "
                    f"{before['retry_after']} s")
    verdict = mock.verdict()
    busiest = max(by_call.values(), key=len)
    seen = [(r["status"], round(r["started_at"] - log[0]["started_at"], 2)) for r in busiest]
    why = f"LLMock's verdict: {json.dumps(verdict)[:2000]}; the busiest call's requests (status, s): {seen}"
    # A retry_storm finding (a call past 10 requests) is the test's own retry policy when the
    # call's extra requests are 5xx: its attempts are unlimited 0.05-0.2 s apart, and LLMock's
    # random 500s give one call of 40 eight of them in about one run of ten. What it must not
    # be is cairn re-sending into a throttle: at most 4 of that call's requests may be 429s.
    errors = [f for f in verdict["findings"] if f["severity"] == "error"
              and not (f["code"] == "retry_storm" and sum(r["status"] in THROTTLES for r in busiest) <= 4)]
    assert not errors, why
    return log


def completed(db_url: str, n: int) -> bool:
    return query(db_url, "SELECT count(*) FROM cairn.runs WHERE status = 'completed'") == [(n,)]


def test_plain_completions_parse(workers, db_url, llmock_serve, tmp_path, monkeypatch):
    mock = llmock_serve()
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", providers_file(tmp_path, mock.url, name="llmock"))
    w = workers("plain", "-m", "llm_flows", lease=LEASE_SECONDS)
    start_runs(db_url, lf.ask_call, [("plain-json", "json")])
    start_runs(db_url, lf.ask_call_streaming, [("plain-stream", "stream")])
    wait_for("both plain runs", lambda: completed(db_url, 2), procs=(w,))
    recorded = results(db_url)
    for key in ("json", "stream"):
        result = recorded[key]
        assert result["type"] == "cairn.llm.completion"
        assert result["text"].strip(), result
        assert result["model"] == result["requested_model"] == lf.MODEL
        assert result["finish_reason"] == "stop"
        assert result["usage"]["input_tokens"] > 0, result
        assert result["usage"]["output_tokens"] > 0, result
        assert result["usage"]["cost_usd"] is not None, "deepseek-chat is priced"
        assert result["attempt"] == 1
        [(output,)] = query(db_url, "SELECT h.data->'result' FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                                    "WHERE r.workflow_id = %s AND h.type = 'WorkflowCompleted'", (f"plain-{key}",))
        assert output == result["text"], "the workflow got the recorded text"
    log = mock.requests()
    assert [(r["call"], r["stream"], r["status"]) for r in log] == [("json", False, 200), ("stream", True, 200)]


def test_scripted_faults_are_handled(workers, db_url, llmock_serve, tmp_path, monkeypatch):
    mock = llmock_serve("--latency-ms", "50")
    # Consumed by the requests in their order of arrival, whichever call they are for.
    mock.scenario({"type": "fail", "status": 500, "times": 3},
                  {"type": "fail", "status": 429, "retry_after": 1, "times": 2},
                  {"type": "fail", "status": 503, "times": 1},  # LLMock's default Retry-After: 1 s
                  {"type": "delay", "seconds": 0.5, "times": 2})
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", providers_file(tmp_path, mock.url, name="llmock"))
    procs = tuple(workers(f"t{i}", "-m", "llm_flows", lease=LEASE_SECONDS) for i in range(2))
    keys = [f"t{i}" for i in range(6)]
    start_runs(db_url, lf.ask_call, [(f"scripted-{k}", k) for k in keys])
    wait_for("every scripted run", lambda: completed(db_url, len(keys)), procs=procs)
    log = check_calls(db_url, mock, keys)
    statuses = Counter(r["status"] for r in log)
    assert (statuses[500], statuses[429], statuses[503]) == (3, 2, 1), f"the faults were played: {statuses}"
    assert sum(1 for r in log if r["duration"] >= 0.5) >= 2, "the delays were played"


def test_random_failures_and_quota_are_survived(workers, db_url, llmock_serve, tmp_path, monkeypatch):
    """30 % random 500s (LLMock draws them unseeded, before the quota) and a 34 rpm quota
    (a bucket of 34 refilling at 0.57/s) met by 40 calls: it runs dry unless they spread over
    more than ~10 s, and answers 429 with the real wait, about 2 s."""
    mock = llmock_serve("--error-rate", "500=0.3", "--rpm", "34")
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", providers_file(tmp_path, mock.url, name="llmock"))
    procs = tuple(workers(f"r{i}", "-m", "llm_flows", lease=LEASE_SECONDS) for i in range(2))
    keys = [f"r{i}" for i in range(40)]
    start_runs(db_url, lf.ask_call, [(f"random-{k}", k) for k in keys])
    wait_for("every random run", lambda: completed(db_url, len(keys)), procs=procs, timeout=90)
    log = check_calls(db_url, mock, keys)
    statuses = Counter(r["status"] for r in log)
    assert statuses[500] > 0, f"random 500s were drawn: {statuses}"
    assert statuses[429] > 0, f"the quota ran dry: {statuses}"
