"""examples/research_agent.py end to end: a ReAct loop against a provider that throttles
and goes down, every model call recorded, a replay that calls no model, the run's cost."""

from __future__ import annotations

import json

import research_agent as ex

from cairn.llm import configure_providers
from cairn.llm import fake as f
from support import cairn_in_thread as cli


async def test_the_agent_rides_out_429s_and_an_outage_and_replays_without_calls(client, start_worker, fake_llm,
                                                                                   db_url):
    configure_providers([ex.provider(fake_llm, recovery_seconds=0.1)])
    ex.flaky_provider(fake_llm)
    await start_worker(workflows=[ex.research], activities=[ex.search_corpus])
    handle = await client.start(ex.research, ex.Question(text="How does a workflow survive a crash?",
                                                         retry_seconds=0.05), id="research-1")
    answer = ex.Answer.model_validate(await handle.result(timeout=60))

    assert answer.stopped == "answer"
    assert answer.steps == 3
    assert answer.sources[0] == "durable-execution.md"
    assert "skip-locked.md" in answer.sources
    assert len(set(answer.sources)) == len(answer.sources)
    requests = fake_llm.requests()
    assert [r["outcome"] for r in requests] == ["status 429"] * 2 + ["status 503"] * 3 + ["ok"] * 3
    assert requests[1]["time"] - requests[0]["time"] >= 1.0, "the second call waited for Retry-After"
    # The tool results went back to the model: the third model call sees the first search's hits.
    third = requests[7]["body"]["messages"]
    assert (third[-1]["role"], third[-1]["tool_call_id"]) == ("tool", "call_2")
    assert "durable-execution.md" in third[-3]["content"]

    history = await handle.history()
    chats = [e for e in history if e.type == "ActivityScheduled" and e.data["activity_type"] == "cairn.llm.chat"]
    done = [e for e in history if e.type == "ActivityCompleted" and e.data["activity_seq"] in {c.seq for c in chats}]
    assert len(chats) == len(done) == 3, "every model call is one recorded activity"
    assert [e.data["attempt"] for e in done] == [4, 1, 1], "429s burnt no attempt; the 503s burnt three"
    searches = [e for e in history if e.type == "ActivityScheduled" and e.data["activity_type"] == "search_corpus"]
    assert [e.data["input"] for e in searches] == [["durable timers after a crash"], ["workers skip locked rows"]]

    totals = (await handle.describe()).llm_totals
    assert totals is not None
    assert (totals["calls"], totals["input_tokens"], totals["output_tokens"]) == (3, 1600, 85)
    assert totals["cost_usd"] > 0

    replayed = await cli(db_url, "replay", "research-1", "-m", "research_agent", "--json")
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.output)["ok"] is True
    assert len(fake_llm.requests()) == len(requests), "the replay made no model call"


async def test_the_agent_stops_at_its_step_limit(client, start_worker, fake_llm):
    configure_providers([fake_llm.provider_config(models=[ex.MODEL])])
    looping = f.ok("", tool_calls=[{"id": "c", "name": "search_corpus", "arguments": '{"query": "sagas"}'}])
    fake_llm.script([], default=looping)  # a model that never stops searching
    await start_worker(workflows=[ex.research], activities=[ex.search_corpus])
    handle = await client.start(ex.research, ex.Question(text="What is a saga?", max_steps=3), id="research-2")
    answer = ex.Answer.model_validate(await handle.result(timeout=30))
    assert (answer.stopped, answer.steps, answer.sources) == ("step_limit", 3, ["sagas.md"])
    assert len(fake_llm.requests()) == 3
