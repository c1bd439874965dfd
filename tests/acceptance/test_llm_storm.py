"""Issue 14: LLM activities hold under a provider storm.

A new user's setup: three ``cairn worker`` PROCESSES at their default settings (no worker,
breaker, retry or throttle options; ``-v`` only makes them log at info), about a hundred
workflows of two or three ``cairn.llm.chat`` calls in a row, against Cairn's fake provider
in storm mode: 30 % of requests answered 500, and a 429 burst (Retry-After to its end)
every few seconds. Asserted from the fake's request log, the database and the workers'
logs, never from absolute times (the only bound is a generous wait for completion):

- every workflow completes;
- no call is answered 200 more than once (a call is paid once), by the call key each
  request carries;
- no half-open period lets more requests reach the provider than the breaker's
  ``permitted_calls_in_half_open`` (periods from ``cairn.breaker_events``);
- no worker logs a ``PoolTimeout`` or a traceback, or gives up writing an outcome.

Violations that cannot heal (a failed run, a call paid twice, a probe overrun, a pool
timeout) fail the test as soon as they are seen, with the figures (``acceptance_support``'s
storm helpers, shared with test_llm_storm_faults.py).
"""

from __future__ import annotations

import llm_flows as lf
import pytest
from acceptance_support import STORM, STORM_WORKFLOWS, providers_file, run_storm, storm_calls

pytestmark = pytest.mark.acceptance

WORKERS = 3
COMPLETION_WAIT_SECONDS = 180.0  # generous: fails with the figures if the runs are not done by then


@pytest.mark.timeout(COMPLETION_WAIT_SECONDS + 60)
def test_llm_calls_hold_under_a_provider_storm(workers, db_url, fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", providers_file(tmp_path, fake_llm.url))
    procs = tuple(workers(f"storm{i}", "-m", "llm_flows", defaults=True, verbose=1) for i in range(WORKERS))
    breaker = f"fake:{lf.MODEL}:{fake_llm.url}"
    fake_llm.storm(**STORM)
    figures = run_storm(db_url, fake_llm, lambda: procs, breaker, timeout=COMPLETION_WAIT_SECONDS)
    print(figures.summary().split("\n--- ")[0])  # the figures of a passing run, for `pytest -s`
    expected_calls = storm_calls(STORM_WORKFLOWS)
    log = fake_llm.requests()
    assert figures.calls == expected_calls, "every call reached the provider, each with its key"
    assert len({r["call"] for r in log if r["status"] == 200}) == expected_calls, "every call was answered once"
    assert figures.why["burst"] > 0, f"the run met a 429 burst: {figures.summary()}"
    assert figures.why["fail"] > 0, f"the run met 500s: {figures.summary()}"
