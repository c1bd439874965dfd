"""The terminal views: describe's pending activity states (breaker waits, heartbeat age),
plain output off a terminal and colours on one, history --follow of a plain run, and the
progress line of start --wait."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from cairn import activity, workflow
from cairn.cli import main
from support import events, wait_until

ANSI = "\x1b["


@activity.defn
async def gated_payment(amount: int) -> int:
    raise activity.Reschedule(60.0, kind="breaker", reason="breaker payments is open until later")


@activity.defn
async def slow_beat(n: int) -> int:
    """Heartbeats for n x 50 ms."""
    for _ in range(n):
        activity.heartbeat("tick")
        await asyncio.sleep(0.05)
    return n


@workflow.defn
async def pays(amount: int) -> int:
    await workflow.execute_activity(slow_beat, 80, start_to_close_timeout=timedelta(seconds=30),
                                    heartbeat_timeout=timedelta(seconds=5))
    return await workflow.execute_activity(gated_payment, amount, start_to_close_timeout=timedelta(seconds=10))


@workflow.defn
async def waits_for_go() -> str:
    await workflow.wait_signal("go")
    return "went"


def invoke(db_url: str, *args: str, env: dict[str, str] | None = None) -> str:
    ran = CliRunner().invoke(main, ["--database-url", db_url, *args], env=env)
    assert ran.exit_code == 0, ran.output
    return ran.output


async def test_describe_pending_activity_states_plain_and_coloured(client, start_worker, db_url, sql):
    await start_worker(workflows=[pays], activities=[gated_payment, slow_beat])
    handle = await client.start(pays, 5, id="term-pay")
    # First the heartbeating activity runs: describe shows its worker and heartbeat age.
    await wait_until(lambda: sql("SELECT heartbeat_at FROM cairn.activity_tasks WHERE run_id = %s",
                                 (handle.run_id,)) not in ([], [(None,)]), timeout=20, what="a heartbeat")
    out = await asyncio.to_thread(invoke, db_url, "describe", "term-pay")
    assert "pending activities:" in out
    (line,) = [x for x in out.splitlines() if " slow_beat " in x]
    assert "running on " in line
    assert "heartbeat " in line
    assert " s ago" in line
    assert ANSI not in out
    # Then the payment is put off by its (here simulated) breaker: "waiting for breaker".
    await wait_until(lambda: sql("SELECT last_failure->>'type' FROM cairn.activity_tasks WHERE run_id = %s",
                                 (handle.run_id,)) == [("Rescheduled",)], timeout=30, what="the reschedule")
    out = await asyncio.to_thread(invoke, db_url, "describe", "term-pay")
    (line,) = [x for x in out.splitlines() if " gated_payment " in x]
    assert "waiting for breaker payments (open) until " in line
    assert "status    running" in out
    assert ANSI not in out
    # On a terminal (forced): rich tables and colours, same content.
    coloured = await asyncio.to_thread(invoke, db_url, "describe", "term-pay", env={"FORCE_COLOR": "1"})
    assert ANSI in coloured
    assert "waiting for breaker payments" in coloured
    assert "pending activities" in coloured
    # --json is unchanged by any of this.
    js = await asyncio.to_thread(invoke, db_url, "describe", "term-pay", "--json", env={"FORCE_COLOR": "1"})
    assert ANSI not in js
    assert '"pending_activities"' in js


async def test_history_follow_streams_a_plain_run_until_it_closes(client, start_worker, db_url, sql):
    await start_worker(workflows=[waits_for_go])
    handle = await client.start(waits_for_go, id="term-follow")
    await wait_until(lambda: any(t == "WorkflowTaskStarted" for _, t, _ in events(sql, handle.run_id)), timeout=20)
    follower = asyncio.create_task(asyncio.to_thread(invoke, db_url, "history", "term-follow", "--follow"))
    await asyncio.sleep(0.5)
    assert not follower.done()  # it waits for more while the run is open
    await handle.signal("go")
    out = await asyncio.wait_for(follower, 30)  # and ends once the run closed
    types = [line.split()[2] for line in out.splitlines() if line[:1].isdigit()]
    assert types == [t for _, t, _ in events(sql, handle.run_id)]
    assert types[-1] == "WorkflowCompleted"


async def test_start_wait_progress_line_on_a_terminal_only(start_worker, db_url):
    await start_worker(workflows=[quick], activities=[slow_beat])
    plain = await asyncio.to_thread(CliRunner().invoke, main, [
        "--database-url", db_url, "start", "quick", "-m", __name__, "--id", "term-wait-1", "--wait"])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.strip() == "10"
    assert "activities done" not in plain.output
    shown = await asyncio.to_thread(CliRunner().invoke, main, [
        "--database-url", db_url, "start", "quick", "-m", __name__, "--id", "term-wait-2", "--wait"],
        env={"FORCE_COLOR": "1"})
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.strip().endswith("10")
    assert "term-wait-2" in shown.stderr
    assert "activities done 1" in shown.stderr
    assert "completed" in shown.stderr


@workflow.defn
async def quick() -> int:
    return await workflow.execute_activity(slow_beat, 10, start_to_close_timeout=timedelta(seconds=30))


def _llm_run() -> SimpleNamespace:
    """A description (as ``handle.describe()`` gives) of a run whose LLM call was served by a fallback."""
    call = {"seq": 3, "provider": "fake", "model": "gpt-4o-mini", "attempt": 3, "input_tokens": 812,
            "cached_input_tokens": 0, "output_tokens": 9, "cost_usd": 0.000129, "ttft_seconds": 0.0371234,
            "skipped": [{"model": "deepseek-chat", "reason": "2 failed attempts of this call"}]}
    totals = {"calls": 1, "input_tokens": 812, "cached_input_tokens": 0, "output_tokens": 9, "cost_usd": 0.000129}
    return SimpleNamespace(
        workflow_id="summarize-d-1", run_id="01a24c28-15e8-7387-b636-d0fe69e0b62c", workflow_type="summarize",
        queue="default", status="completed", created_at=None, closed_at=None, history_length=12, failure=None,
        reset_from=None, search_attributes=None, memo=None, parent=None, continued_from=None, continued_to=None,
        execution_deadline=None, workflow_task=None, children=[], pending_activities=[], pending_timers=[],
        sagas=[], llm_calls=[call], llm_totals=totals, unserved=[])


@pytest.mark.parametrize("columns", [60, 200])
def test_describe_on_a_terminal_keeps_every_llm_column(columns, monkeypatch, capsys):
    """The defect: on a terminal the LLM calls table had no TTFT and no SKIPPED column;
    a table wider than the terminal is folded into per-row blocks, never cut."""
    from cairn.cli.render import echo_describe

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", str(columns))
    echo_describe(_llm_run())
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "…" not in out, "nothing is cut"
    for header in ("MODEL", "TTFT", "ATTEMPT", "SKIPPED"):
        assert header in out
    assert "0.037 s" in out
    assert "deepseek-chat: 2 failed attempts of this call" in out
    assert "llm total 1 call(s), 812 in (0 cached) / 9 out tokens, cost $0.000129" in out
