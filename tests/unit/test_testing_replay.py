"""cairn.testing.replay_history over the golden histories: the current code replays them,
changed code raises NonDeterminismError where it diverges, and every form of a history
(path, parsed file, events) is accepted."""

from __future__ import annotations

import json

import changed_workflows as changed
import golden_workflows as g
import pytest
import unpatched_workflows as old

from cairn import workflow
from cairn.engine.history import Event
from cairn.engine.instance import WorkflowInstance
from cairn.errors import InputValidationError, NonDeterminismError, UnknownWorkflowType
from cairn.testing import ReplayResult, replay_history
from support import HISTORIES

GOLDEN = [g.golden_pipeline, g.golden_retry, g.golden_saga, g.golden_signals, g.golden_patched]
PIPE = HISTORIES / "pipeline_completed.json"


@pytest.mark.parametrize("name", sorted(p.name for p in HISTORIES.glob("*.json")))
def test_every_golden_history_replays_with_the_current_code(name):
    data = json.loads((HISTORIES / name).read_text())
    assert replay_history(GOLDEN, HISTORIES / name) == ReplayResult(
        data["workflow_id"], data["run_id"], data["workflow_type"], len(data["events"]))


@pytest.mark.parametrize(("name", "fn", "expected"), [
    ("pipeline_completed.json", changed.golden_pipeline_swapped,
     (3, "ActivityScheduled(activity_type='double')", "ActivityScheduled(activity_type='greet')")),
    ("signal_driven.json", changed.golden_signals_no_timeout, (3, "TimerStarted", None)),
    ("patched_new_run.json", old.golden_patched_before, None),
])
def test_changed_code_raises_non_determinism_error(name, fn, expected):
    with pytest.raises(NonDeterminismError) as info:
        replay_history(fn, str(HISTORIES / name))
    if expected is not None:
        assert (info.value.seq, info.value.expected, info.value.produced) == expected


def test_a_parsed_file_and_its_events_replay_alike():
    data = json.loads(PIPE.read_text())
    events = [Event.from_json(e) for e in data["events"]]
    by_path = replay_history(g.golden_pipeline, PIPE)
    assert replay_history(g.golden_pipeline, data) == by_path
    assert replay_history(g.golden_pipeline, data["events"]).events == by_path.events
    assert replay_history(g.golden_pipeline, events).workflow_type == "golden_pipeline"


def test_a_divergence_in_a_list_of_events_names_its_seq():
    events = json.loads(PIPE.read_text())["events"]
    with pytest.raises(NonDeterminismError) as info:
        replay_history(changed.golden_pipeline_swapped, events)
    assert info.value.seq == 3


def test_the_replayed_instances_are_unwound(monkeypatch):
    """A replay leaves no workflow coroutine pending, whether it passed or diverged."""
    made: list[WorkflowInstance] = []
    init = WorkflowInstance.__init__

    def tracking(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(WorkflowInstance, "__init__", tracking)
    replay_history(g.golden_pipeline, PIPE)
    with pytest.raises(NonDeterminismError):
        replay_history(changed.golden_pipeline_swapped, PIPE)
    assert len(made) == 2
    assert all(inst.loop.is_closed() for inst in made)


def test_a_bug_in_the_code_raises_its_own_exception():
    """A bug (here a TypeError) fails the workflow task: replay raises it, not a divergence."""
    @workflow.defn(name="golden_pipeline")
    async def broken(x: int) -> None:
        raise TypeError("boom")

    with pytest.raises(TypeError, match="boom"):
        replay_history(broken, PIPE)


def test_a_failure_the_code_raises_is_a_command_that_diverges():
    """An application failure is the command WorkflowFailed, where history scheduled an activity."""
    @workflow.defn(name="golden_pipeline")
    async def failing(x: int) -> None:
        raise ZeroDivisionError("boom")

    with pytest.raises(NonDeterminismError) as info:
        replay_history(failing, PIPE)
    assert (info.value.seq, info.value.produced) == (3, "WorkflowFailed")


def test_the_history_workflow_type_must_be_among_the_workflows():
    with pytest.raises(UnknownWorkflowType, match=r"golden_pipeline.*golden_retry, golden_saga"):
        replay_history([g.golden_retry, g.golden_saga], PIPE)


@pytest.mark.parametrize("bad", [{"events": "no"}, {"nothing": []}, [], [{"seq": 1}]])
def test_what_is_not_a_history_is_refused(bad):
    with pytest.raises(InputValidationError):
        replay_history(g.golden_pipeline, bad)


def test_a_file_that_is_not_a_history_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(InputValidationError, match="not a history file"):
        replay_history(g.golden_pipeline, path)
    with pytest.raises(InputValidationError, match="cannot read"):
        replay_history(g.golden_pipeline, tmp_path / "missing.json")
