"""The payload store against a mock LLM server this team did not write: ``llm_flows.agent``
(each turn sends the whole growing conversation, ~2,000-character messages) run by worker
PROCESSES against LLMock (``llmock serve``, test_llm_third_party.py's peer of Cairn's own
fake) with its random 500s, the worker killed with SIGKILL mid-call and a second one
finishing the conversation. The workers' ``CAIRN_MAX_PAYLOAD_BYTES`` (64 KiB) is below the
last call's message list: the run completes only because each message is stored once by
reference. Asserted from LLMock's journal (``GET /_llmock/requests``, every request's body)
and the database:

- the run completes; every turn is answered 200 at least once and RECORDED exactly once
  (one outcome per activity, ``cairn verify``). Answered 200 twice is allowed only for the
  call in flight on the killed worker: LLMock may have answered it before the kill and the
  answer died with the worker, unrecorded, so the second worker pays for it again. That is
  what Cairn promises (at-least-once calls, exactly-once records); no other call may be
  paid twice;
- every request of turn N (its 500s too) carried exactly the conversation so far: the
  system prompt, the turn prompts, and LLMock's own answers to the earlier turns (asked
  of LLMock again afterwards: it answers a body the same way every time), i.e. the
  references were resolved before sending, by the killed worker and by the new one;
- history holds references (no message text, no event near the limit), each message is
  stored once, ``cairn history --json`` resolves them to what LLMock received, and
  ``cairn verify -m llm_flows`` (which replays the run) reports no violation.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import Counter, defaultdict
from typing import Any

import httpx
import llm_flows as lf
import pytest
from acceptance_support import cairn_cli, providers_file, run_status
from llmock_support import LEASE_SECONDS, Mock

from support import WorkerProc, outcomes_per_activity, query, resolved, wait_for

pytest.importorskip("llmock", reason="llmock (dev extras) is not installed")

pytestmark = pytest.mark.acceptance

TURNS, SIZE = 20, 2_000
LIMIT = 64 * 1024  # the workers' CAIRN_MAX_PAYLOAD_BYTES: the whole list passes it by turn ~16
ERROR_RATE = "500=0.3"  # LLMock's random 500s, unseeded: the test asserts what holds for any draw
LATENCY_MS = "100"  # each answer takes a moment: the kill finds a call in flight
WORKFLOW_ID = "agent-llmock"
TURN = re.compile(r"^turn (\d+): ")


def turn_of(request: Any) -> int:
    """The turn of a chat request (a body, or a recorded ChatRequest): its last user message's."""
    last = [m for m in request["messages"] if m["role"] == "user"][-1]
    found = TURN.match(last["content"])
    assert found, f"not an agent turn: {last['content'][:40]!r}"
    return int(found.group(1))


def conversation(turn: int, answers: dict[int, str]) -> list[dict[str, str]]:
    """The messages ``llm_flows.agent`` sends on ``turn``, given LLMock's earlier answers."""
    messages = [{"role": "system", "content": "You are terse. " + "s" * SIZE}]
    for i in range(turn):
        messages += [{"role": "user", "content": f"turn {i}: " + "q" * SIZE},
                     {"role": "assistant", "content": f"{answers[i]} ({i}) " + "a" * SIZE}]
    return [*messages, {"role": "user", "content": f"turn {turn}: " + "q" * SIZE}]


def answer_of(mock: Mock, body: dict[str, Any]) -> str:
    """What LLMock answers to ``body`` (its default style picks the text by a CRC of the
    prompt: the same body, the same answer), past its random 500s."""
    for _ in range(100):
        r = httpx.post(f"{mock.url}/chat/completions", json=body, timeout=30)
        if r.status_code == 200:
            return str(r.json()["choices"][0]["message"]["content"])
        assert r.status_code == 500, r.text
    pytest.fail("LLMock answered 500 a hundred times in a row")


def answered(db_url: str) -> int:
    return int(query(db_url, "SELECT count(*) FROM cairn.history WHERE type = 'ActivityCompleted'")[0][0])


def leased_turns(db_url: str, worker: str) -> set[int]:
    """The turns of the calls leased to ``worker`` (their recorded requests, resolved)."""
    rows = query(db_url, "SELECT input FROM cairn.activity_tasks WHERE lease_owner = %s", (worker,))
    return {turn_of(resolved(db_url, args)[0]["request"]) for (args,) in rows}


def kill_mid_call(db_url: str, victim: WorkerProc) -> set[int]:
    """SIGKILLs ``victim`` while it holds a call; returns the turns it held unrecorded (its
    lease outlives it): the only calls that may be answered 200 twice."""
    def holding_a_call() -> bool:
        victim.proc.send_signal(signal.SIGSTOP)  # frozen, so that what it has leased stays leased
        if query(db_url, "SELECT 1 FROM cairn.activity_tasks WHERE lease_owner = %s", (victim.name,)):
            return True
        victim.proc.send_signal(signal.SIGCONT)  # between calls (its workflow task): look again
        assert run_status(db_url, WORKFLOW_ID) == "running", "the conversation ended before the kill"
        return False

    wait_for("the worker to hold a call", holding_a_call, interval=0.02, procs=(victim,))
    victim.kill9()
    # Its sessions end with it (a statement it had sent runs to its end first); what stays
    # leased to it then is the call whose outcome it had not recorded.
    wait_for("the killed worker's sessions to end", lambda: not query(
        db_url, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (f"cairn-{victim.name}",)))
    return leased_turns(db_url, victim.name)


def start_agent(db_url: str) -> None:
    from cairn import Client

    async def go() -> None:
        async with await Client.connect(db_url) as client:
            await client.start(lf.agent, TURNS, SIZE, id=WORKFLOW_ID)

    asyncio.run(go())


def test_long_agent_through_random_500s_and_a_kill(llmock_serve, workers, db_url, tmp_path, monkeypatch):
    mock = llmock_serve("--error-rate", ERROR_RATE, "--latency-ms", LATENCY_MS)
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", providers_file(tmp_path, mock.url, name="llmock"))
    monkeypatch.setenv("CAIRN_MAX_PAYLOAD_BYTES", str(LIMIT))
    first = workers("agent1", "-m", "llm_flows", lease=LEASE_SECONDS)
    start_agent(db_url)
    wait_for("a third of the turns", lambda: answered(db_url) >= TURNS // 3, procs=(first,))
    in_flight = kill_mid_call(db_url, first)
    killed_after = answered(db_url)
    second = workers("agent2", "-m", "llm_flows", lease=LEASE_SECONDS)
    # The killed worker's leases (30 s) lapse before the second takes its call over.
    wait_for("the agent to finish", lambda: run_status(db_url, WORKFLOW_ID) not in (None, "running"),
             timeout=LEASE_SECONDS + 90, procs=(second,))
    assert run_status(db_url, WORKFLOW_ID) == "completed", second.log()[-3000:]
    assert TURNS // 3 <= killed_after < TURNS, "the kill came mid-conversation"
    [(result,)] = query(db_url, "SELECT h.data->'result' FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                                "WHERE r.workflow_id = %s AND h.type = 'WorkflowCompleted'", (WORKFLOW_ID,))
    assert result["messages"] == 2 * TURNS + 1

    # LLMock's journal: each turn's requests, paid (200) once but the call in flight at the kill.
    log = mock.requests()
    by_turn: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in log:
        by_turn[turn_of(r["body"])].append(r)
    assert sorted(by_turn) == list(range(TURNS))
    paid = Counter(t for t, reqs in by_turn.items() for r in reqs if r["status"] == 200)
    statuses = Counter(r["status"] for r in log)
    figures = f"statuses {dict(statuses)}; in flight at the kill: turns {sorted(in_flight)}; paid {dict(paid)}"
    assert set(statuses) <= {200, 500}, figures
    assert statuses[500] > 0, f"random 500s were drawn: {figures}"
    assert all(paid[t] >= 1 for t in range(TURNS)), figures
    paid_twice = {t for t, n in paid.items() if n > 1}
    assert paid_twice <= in_flight, f"only the call in flight on the killed worker may be paid twice: {figures}"
    assert all(n <= 2 for n in paid.values()), figures
    # ... and recorded exactly once: one outcome per activity, the 500s retried within it.
    outcomes = outcomes_per_activity(lambda s, p=None: query(db_url, s, p))
    assert sorted(outcomes.values()) == [1] * TURNS, outcomes

    # Every request of turn N carried the conversation so far, LLMock's own answers in it.
    answers: dict[int, str] = {}
    for turn in range(TURNS):
        for r in by_turn[turn]:
            assert r["body"]["messages"] == conversation(turn, answers), f"turn {turn}'s request #{r['seq']}"
        answers[turn] = answer_of(mock, by_turn[turn][0]["body"])
    # The last call's messages, recorded whole, would be over the workers' payload limit.
    assert len(json.dumps(by_turn[TURNS - 1][0]["body"]["messages"])) > LIMIT

    # History holds references: no message text in it (LLMock's answers quote the prompt's
    # first 80 characters, so look for longer runs), and no event near the limit.
    for filler in ("s", "q", "a"):
        assert query(db_url, "SELECT count(*) FROM cairn.history WHERE data::text LIKE %s",
                     (f"%{filler * 100}%",)) == [(0,)], f"message text ({filler}…) inline in history"
    [(largest,)] = query(db_url, "SELECT max(octet_length(data::text)) FROM cairn.history")
    assert largest < 16 * 1024
    scheduled = [d for (d,) in query(db_url, "SELECT data FROM cairn.history WHERE type = 'ActivityScheduled'")]
    assert all(set(m) == {"$cairn.payload"} for d in scheduled for m in d["input"][0]["request"]["messages"])
    # Each message stored once, through the kill and the 500s: the system prompt, TURNS
    # prompts, TURNS - 1 answers (the last is never sent; LLMock's answers are short, so the
    # completions and the lists of references stay inline).
    [(stored, links)] = query(db_url, "SELECT count(*), (SELECT count(*) FROM cairn.run_payloads) "
                                      "FROM cairn.payloads")
    assert stored == links == 2 * TURNS

    # cairn history --json resolves them: each call's messages as LLMock received them, and
    # its recorded answer LLMock's.
    ran = cairn_cli("history", WORKFLOW_ID, "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    assert "$cairn.payload" not in ran.out
    events = json.loads(ran.out)["events"]
    requests = {e["seq"]: e["data"]["input"][0]["request"] for e in events if e["type"] == "ActivityScheduled"}
    texts = {turn_of(requests[e["data"]["activity_seq"]]): e["data"]["result"]["text"]
             for e in events if e["type"] == "ActivityCompleted"}
    assert texts == answers
    # Each 500 cost the call an attempt (the kill costs the call it caught one more).
    attempts = {turn_of(requests[e["data"]["activity_seq"]]): e["data"]["result"]["attempt"]
                for e in events if e["type"] == "ActivityCompleted"}
    for turn, reqs in by_turn.items():
        failures = sum(1 for r in reqs if r["status"] == 500)
        assert attempts[turn] == 1 + failures or turn in in_flight, (turn, attempts[turn], failures)
    assert sorted(turn_of(r) for r in requests.values()) == list(range(TURNS))
    for request in requests.values():
        assert request["messages"] == by_turn[turn_of(request)][0]["body"]["messages"]

    # The invariant checker, replaying the run through its references: no violation.
    ran = cairn_cli("verify", "-m", "llm_flows", "--json", db_url=db_url)
    assert ran.code == 0, ran.out + ran.err
    report = json.loads(ran.out)
    assert report["ok"], report
    assert report["stats"]["replay"]["replayed"] == 1, report
    assert "Traceback" not in second.log(), second.log()[-3000:]
    print(f"{len(log)} requests for {TURNS} turns, killed after {killed_after}: {figures}")
