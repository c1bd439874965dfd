"""The replayer over checked-in golden histories (recorded by ``tests/histories/regenerate.py``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import golden_workflows as g
import pytest
from click.testing import CliRunner

from cairn import ActivityError, workflow
from cairn.cli import main as cli
from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.instance import WorkflowInstance, replay
from cairn.errors import NonDeterminismError
from cairn.testing import replay_history
from cairn.workflow import WorkflowInfo, definition_of
from support import HISTORIES

CAIRN = Path(sys.executable).with_name("cairn")


def load(name: str) -> tuple[dict[str, Any], list[Event]]:
    data = json.loads((HISTORIES / name).read_text())
    return data, [Event.from_json(e) for e in data["events"]]


def info_of(data: dict[str, Any], events: list[Event]) -> WorkflowInfo:
    """The run's identity, built the way `cairn replay` builds it."""
    return WorkflowInfo(workflow_id=data["workflow_id"], run_id=data["run_id"], workflow_type=data["workflow_type"],
                        queue=data["queue"], namespace="default", start_time=events[0].at or datetime.now(UTC))


def replay_file(name: str, fn: Any, events: list[Event] | None = None) -> WorkflowInstance:
    data, recorded = load(name)
    return replay(definition_of(fn), info_of(data, recorded), recorded if events is None else events)


def divergence(name: str, fn: Any) -> tuple[int, str | None, str | None]:
    """Where ``fn`` diverges from the golden history ``name`` (through the public
    ``cairn.testing.replay_history``)."""
    with pytest.raises(NonDeterminismError) as info:
        replay_history(fn, HISTORIES / name)
    return info.value.seq, info.value.expected, info.value.produced


def batches(events: list[Event]) -> list[tuple[Event, list[Event], list[Event]]]:
    """Splits a history into (marker, inputs, recorded commands) per workflow task."""
    out: list[tuple[Event, list[Event], list[Event]]] = []
    for e in events[1:]:
        if e.type == h.WORKFLOW_TASK_STARTED:
            out.append((e, [], []))
        elif e.type in h.INPUT_EVENTS:
            out[-1][1].append(e)
        else:
            out[-1][2].append(e)
    return out


def strip(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "stack"}


# -- the golden histories are what they claim to be


def test_golden_pipeline_history_has_the_expected_shape():
    data, events = load("pipeline_completed.json")
    assert data["status"] == "completed"
    assert data["workflow_type"] == "golden_pipeline"
    assert [(e.seq, e.type) for e in events] == [
        (1, h.WORKFLOW_STARTED), (2, h.WORKFLOW_TASK_STARTED), (3, h.ACTIVITY_SCHEDULED),
        (4, h.ACTIVITY_SCHEDULED), (5, h.WORKFLOW_TASK_STARTED), (6, h.ACTIVITY_COMPLETED),
        (7, h.ACTIVITY_COMPLETED), (8, h.TIMER_STARTED), (9, h.WORKFLOW_TASK_STARTED), (10, h.TIMER_FIRED),
        (11, h.TIMER_STARTED), (12, h.ACTIVITY_SCHEDULED), (13, h.WORKFLOW_TASK_STARTED),
        (14, h.ACTIVITY_COMPLETED), (15, h.TIMER_CANCELLED), (16, h.WORKFLOW_COMPLETED),
    ]
    assert events[-1].data["result"]["again"] == 84


def test_golden_retry_history_has_a_retried_then_failed_activity():
    _, events = load("retry_failed_caught.json")
    assert [e.type for e in events] == [
        h.WORKFLOW_STARTED, h.WORKFLOW_TASK_STARTED, h.ACTIVITY_SCHEDULED, h.WORKFLOW_TASK_STARTED,
        h.ACTIVITY_FAILED, h.WORKFLOW_COMPLETED]
    failed = events[4].data
    assert (failed["attempts"], failed["retry_state"]) == (3, "maximum_attempts")
    assert (failed["failure"]["type"], failed["failure"]["message"]) == ("Boom", "boom 7")
    assert events[2].data["options"]["retry_policy"]["maximum_attempts"] == 3


# -- replay succeeds, command for command


@pytest.mark.parametrize(("name", "fn"), [("pipeline_completed.json", g.golden_pipeline),
                                          ("retry_failed_caught.json", g.golden_retry)])
def test_golden_history_replays(name, fn):
    inst = replay_file(name, fn)
    assert inst.closed
    assert inst.replaying is False


@pytest.mark.parametrize(("name", "fn"), [("pipeline_completed.json", g.golden_pipeline),
                                          ("retry_failed_caught.json", g.golden_retry)])
def test_golden_history_reproduces_every_recorded_command_exactly(name, fn):
    """Stronger than replay(): all of each command's data matches, not just its identity."""
    data, events = load(name)
    inst = WorkflowInstance(definition_of(fn), info_of(data, events), events[0].data["input"])
    for marker, inputs, recorded in batches(events):
        produced = inst.activate(marker, inputs)
        assert [(c.seq, c.type, strip(c.data)) for c in produced] == \
               [(e.seq, e.type, strip(e.data)) for e in recorded], f"batch at seq {marker.seq}"
    assert inst.closed


def test_retry_golden_result_shows_the_caught_activity_error():
    _, events = load("retry_failed_caught.json")
    assert events[-1].data["result"] == {"caught": "Boom", "message": "boom 7", "attempts": 3,
                                         "retry_state": "maximum_attempts"}


def test_open_history_prefix_replays_then_continues_live():
    """A cold worker cache: replay what is recorded, then run the next batch for real."""
    _, events = load("pipeline_completed.json")
    inst = replay_file("pipeline_completed.json", g.golden_pipeline, events[:8])
    assert not inst.closed
    assert inst.last_seq == 8
    produced = inst.activate(events[8], [events[9]])
    assert [(c.seq, c.type, c.data) for c in produced] == [(e.seq, e.type, e.data) for e in events[10:12]]


def test_terminated_history_replays_up_to_the_termination():
    _, events = load("pipeline_completed.json")
    terminated = [*events[:8], Event(9, h.WORKFLOW_TERMINATED, {"reason": "operator"})]
    inst = replay_file("pipeline_completed.json", g.golden_pipeline, terminated)
    assert not inst.closed


def test_history_must_start_with_workflow_started():
    _, events = load("pipeline_completed.json")
    with pytest.raises(NonDeterminismError) as info:
        replay_file("pipeline_completed.json", g.golden_pipeline, events[1:])
    assert (info.value.seq, info.value.expected, info.value.produced) == (2, h.WORKFLOW_STARTED,
                                                                          h.WORKFLOW_TASK_STARTED)
    with pytest.raises(NonDeterminismError) as info:
        replay_file("pipeline_completed.json", g.golden_pipeline, [])
    assert (info.value.seq, info.value.expected, info.value.produced) == (1, h.WORKFLOW_STARTED, None)


# -- changed code diverges, at an exact seq


T = g.TIMEOUT


@workflow.defn(name="golden_pipeline")
async def different_activity(x: int) -> Any:
    await asyncio.gather(workflow.execute_activity(g.greet, "cairn", start_to_close_timeout=T),
                         workflow.execute_activity(g.double, x, start_to_close_timeout=T))


@workflow.defn(name="golden_pipeline")
async def extra_timer_first(x: int) -> Any:
    await workflow.sleep(1)
    return await g.golden_pipeline(x)


@workflow.defn(name="golden_pipeline")
async def fewer_commands(x: int) -> Any:
    doubled = await workflow.execute_activity(g.double, x, start_to_close_timeout=T)
    await workflow.sleep(0.2)
    return doubled


@workflow.defn(name="golden_pipeline")
async def more_commands(x: int) -> Any:
    await asyncio.gather(workflow.execute_activity(g.double, x, start_to_close_timeout=T),
                         workflow.execute_activity(g.greet, "cairn", start_to_close_timeout=T),
                         workflow.execute_activity(g.double, x + 1, start_to_close_timeout=T))


@workflow.defn(name="golden_pipeline")
async def no_timeout_block(x: int) -> Any:
    doubled, _ = await asyncio.gather(workflow.execute_activity(g.double, x, start_to_close_timeout=T),
                                      workflow.execute_activity(g.greet, "cairn", start_to_close_timeout=T))
    await workflow.sleep(0.2)
    return await workflow.execute_activity(g.double, doubled, start_to_close_timeout=T)


@workflow.defn(name="golden_pipeline")
async def returns_early(x: int) -> Any:
    return await asyncio.gather(workflow.execute_activity(g.double, x, start_to_close_timeout=T),
                                workflow.execute_activity(g.greet, "cairn", start_to_close_timeout=T))


@workflow.defn(name="golden_retry")
async def retry_uncaught(x: int) -> Any:
    return await workflow.execute_activity(g.always_fails, x, start_to_close_timeout=T,
                                           retry_policy=g.THREE_TRIES)


@workflow.defn(name="golden_retry")
async def retry_with_fallback(x: int) -> Any:
    try:
        return await workflow.execute_activity(g.always_fails, x, start_to_close_timeout=T,
                                               retry_policy=g.THREE_TRIES)
    except ActivityError:
        return await workflow.execute_activity(g.double, x, start_to_close_timeout=T)


PIPE = "pipeline_completed.json"
RETRY = "retry_failed_caught.json"


@pytest.mark.parametrize(("name", "fn", "expected"), [
    pytest.param(PIPE, different_activity, (3, "ActivityScheduled(activity_type='double')",
                                            "ActivityScheduled(activity_type='greet')"), id="different-activity"),
    pytest.param(PIPE, extra_timer_first, (3, "ActivityScheduled(activity_type='double')", "TimerStarted"),
                 id="extra-timer"),
    pytest.param(PIPE, fewer_commands, (4, "ActivityScheduled(activity_type='greet')", None), id="fewer-commands"),
    pytest.param(PIPE, more_commands, (5, None, "ActivityScheduled(activity_type='double')"), id="more-commands"),
    pytest.param(PIPE, no_timeout_block, (11, "TimerStarted", "ActivityScheduled(activity_type='double')"),
                 id="later-batch"),
    pytest.param(PIPE, returns_early, (8, "TimerStarted", "WorkflowCompleted"), id="completes-early"),
    pytest.param(RETRY, retry_uncaught, (6, "WorkflowCompleted", "WorkflowFailed"), id="fails-instead"),
    pytest.param(RETRY, retry_with_fallback, (6, "WorkflowCompleted", "ActivityScheduled(activity_type='double')"),
                 id="fallback-activity"),
])
def test_changed_code_raises_non_determinism_error_at_the_exact_seq(name, fn, expected):
    assert divergence(name, fn) == expected


def test_non_determinism_error_message_names_seq_and_both_commands():
    with pytest.raises(NonDeterminismError, match=r"^non-deterministic workflow at seq 3: history has "
                       r"ActivityScheduled\(activity_type='double'\), the code produced "
                       r"ActivityScheduled\(activity_type='greet'\)$"):
        replay_file(PIPE, different_activity)
    with pytest.raises(NonDeterminismError, match=r"history has ActivityScheduled.*the code produced no command"):
        replay_file(PIPE, fewer_commands)
    with pytest.raises(NonDeterminismError, match="history has no command, the code produced ActivityScheduled"):
        replay_file(PIPE, more_commands)


def test_changed_activity_arguments_are_not_a_divergence():
    """Only the identity of a command is compared (type and seq, activity type)."""

    @workflow.defn(name="golden_pipeline")
    async def other_arguments(x: int) -> Any:
        return await g.golden_pipeline(x + 1)

    assert replay_file(PIPE, other_arguments).closed


# -- the CLI


def cairn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CAIRN), *args], cwd=HISTORIES, capture_output=True, text=True, timeout=60,
                          check=False)


def test_cli_replay_of_a_good_history_prints_ok():
    out = cairn("replay", PIPE, "-m", "golden_workflows")
    data, _ = load(PIPE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"OK: 16 events of {data['workflow_id']} replay with the current code"


def test_cli_replay_with_changed_code_exits_1_naming_the_seq():
    out = cairn("replay", PIPE, "-m", "changed_workflows")
    assert out.returncode == 1
    assert out.stdout.strip() == (
        "DIVERGED: non-deterministic workflow at seq 3: history has ActivityScheduled(activity_type='double'), "
        "the code produced ActivityScheduled(activity_type='greet')")


@pytest.fixture
def in_histories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HISTORIES)


def test_cli_replay_json_reports_the_divergence(in_histories):
    result = CliRunner().invoke(cli, ["replay", RETRY, "-m", "changed_workflows", "--json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["ok"] is False
    assert out["events"] == 6
    assert {k: out["divergence"][k] for k in ("seq", "expected", "produced")} == {
        "seq": 6, "expected": "WorkflowCompleted", "produced": "WorkflowFailed"}


def test_cli_replay_json_of_the_retry_golden_is_ok(in_histories):
    result = CliRunner().invoke(cli, ["replay", RETRY, "-m", "golden_workflows", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True


def test_cli_replay_rejects_a_file_that_is_not_a_history(in_histories, tmp_path):
    bad = tmp_path / "not-history.json"
    bad.write_text(json.dumps({"hello": "world"}))
    result = CliRunner().invoke(cli, ["replay", str(bad), "-m", "golden_workflows"])
    assert result.exit_code == 2
    assert "is not a history file" in result.stderr


def test_cli_replay_names_an_unknown_workflow_type(in_histories, tmp_path):
    data, _ = load(PIPE)
    data["workflow_type"] = "nope"
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["replay", str(path), "-m", "golden_workflows"])
    assert result.exit_code == 2
    assert "no workflow type 'nope'" in result.stderr
    assert "golden_pipeline" in result.stderr
