"""The payload store end to end (issue 18, item 2): an LLM agent of many turns, whose message
list outgrows the payload limit when recorded whole, runs to completion through worker
PROCESSES, one of them killed with SIGKILL mid-conversation; each message is stored once,
history holds references, and ``cairn history --json`` shows the messages."""

from __future__ import annotations

import json
from pathlib import Path

import llm_flows as lf
import pytest
from acceptance_support import cairn_cli, run_status

from cairn.llm import fake as f
from support import query, wait_for

pytestmark = pytest.mark.acceptance

TURNS, SIZE = 30, 2_000
LIMIT = 64 * 1024  # the workers' CAIRN_MAX_PAYLOAD_BYTES: the whole list would pass it by turn ~16


def providers_file(tmp_path: Path, fake) -> str:
    path = tmp_path / "providers.json"
    path.write_text(json.dumps({"providers": [{"name": "fake", "base_url": fake.url, "models": [lf.MODEL]}]}))
    return str(path)


def _calls(db_url: str) -> int:
    return query(db_url, "SELECT count(*) FROM cairn.history WHERE type = 'ActivityCompleted'")[0][0]


def test_long_agent_completes_through_a_kill(workers, db_url, fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", providers_file(tmp_path, fake_llm))
    # Every answer is long: the completions (the chat activity's results) are stored too.
    fake_llm.script([], default=f.ok("answer " * 1500))
    monkeypatch.setenv("CAIRN_MAX_PAYLOAD_BYTES", str(LIMIT))
    first = workers("p1", "-m", "llm_flows")
    _start(db_url)
    wait_for("a third of the turns", lambda: _calls(db_url) >= TURNS // 3, procs=(first,))
    first.proc.kill()  # SIGKILL mid-conversation: the next worker replays, resolving references
    first.proc.wait(timeout=30)
    second = workers("p2", "-m", "llm_flows")
    wait_for("the agent to finish", lambda: run_status(db_url, "agent-1") != "running", procs=(second,))
    assert run_status(db_url, "agent-1") == "completed", second.log()[-3000:]
    [(result,)] = query(db_url, "SELECT data->'result' FROM cairn.history h JOIN cairn.runs r USING (run_id) "
                                "WHERE r.workflow_id = 'agent-1' AND h.type = 'WorkflowCompleted'")
    assert result["messages"] == 2 * TURNS + 1
    # The last call's messages, recorded whole, would be over the workers' payload limit.
    last = fake_llm.requests()[-1]
    assert len(json.dumps(last["body"]["messages"])) > LIMIT
    # History holds references: no message text in it, and no event near the limit.
    inline = query(db_url, "SELECT count(*) FROM cairn.history WHERE data::text LIKE '%qqqqqqqqqqqqqqqq%'")
    assert inline == [(0,)]
    [(largest,)] = query(db_url, "SELECT max(octet_length(data::text)) FROM cairn.history")
    assert largest < 16 * 1024
    # Each message sent stored once: the system prompt, TURNS prompts, TURNS - 1 answers (the
    # last answer is never sent; the calls' lists of references stay inline, under the
    # threshold), and the TURNS completions.
    [(stored, links)] = query(db_url, "SELECT count(*), (SELECT count(*) FROM cairn.run_payloads) "
                                      "FROM cairn.payloads WHERE size > %s", (SIZE,))
    assert stored == links == 3 * TURNS
    # The LLM views read the stored completions: every call, with its usage.
    ran = cairn_cli("describe", "agent-1", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    calls = json.loads(ran.out)["llm_calls"]
    assert len(calls) == TURNS
    assert all(c["output_tokens"] for c in calls)
    # cairn history --json resolves the references: the messages are there.
    ran = cairn_cli("history", "agent-1", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    assert f"turn {TURNS - 1}: qqqq" in ran.out
    assert "$cairn.payload" not in ran.out
    # cairn db payloads: the store's size, and the run's share of it.
    ran = cairn_cli("db", "payloads", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    whole = json.loads(ran.out)
    assert whole["payloads"] == 3 * TURNS
    assert whole["runs"] == 1
    assert whole["json_bytes"] > whole["stored_bytes"] > 0
    ran = cairn_cli("db", "payloads", "agent-1", "--json", db_url=db_url)
    assert json.loads(ran.out) == whole
    ran = cairn_cli("db", "payloads", db_url=db_url)
    assert ran.out.startswith(f"{3 * TURNS} payloads, "), ran.out


def _start(db_url: str) -> None:
    import asyncio

    from cairn import Client

    async def go() -> None:
        async with await Client.connect(db_url) as client:
            await client.start(lf.agent, TURNS, SIZE, id="agent-1")

    asyncio.run(go())
