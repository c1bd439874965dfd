"""The signal-driven golden history (recorded by ``tests/histories/regenerate.py``): it
replays command for command, answers a query after replay, and changed code diverges."""

from __future__ import annotations

import json

import changed_workflows
import golden_workflows as g
import pytest
from click.testing import CliRunner

from cairn.cli import main as cli
from cairn.engine import history as h
from cairn.engine.instance import WorkflowInstance
from cairn.workflow import definition_of

from .test_replay import batches, divergence, in_histories, info_of, load, replay_file, strip

__all__ = ["in_histories"]  # the fixture, used by name below

SIGNALS = "signal_driven.json"


def test_signal_golden_history_has_the_expected_shape():
    data, events = load(SIGNALS)
    assert data["status"] == "completed"
    assert data["workflow_type"] == "golden_signals"
    assert [(e.seq, e.type) for e in events] == [
        (1, h.WORKFLOW_STARTED), (2, h.WORKFLOW_TASK_STARTED), (3, h.TIMER_STARTED),
        (4, h.WORKFLOW_TASK_STARTED), (5, h.SIGNAL_RECEIVED),
        (6, h.WORKFLOW_TASK_STARTED), (7, h.SIGNAL_RECEIVED), (8, h.SIGNAL_RECEIVED), (9, h.SIGNAL_RECEIVED),
        (10, h.SIGNAL_RECEIVED), (11, h.ACTIVITY_SCHEDULED), (12, h.ACTIVITY_SCHEDULED), (13, h.TIMER_CANCELLED),
        (14, h.WORKFLOW_TASK_STARTED), (15, h.ACTIVITY_COMPLETED), (16, h.ACTIVITY_COMPLETED),
        (17, h.WORKFLOW_COMPLETED),
    ]
    assert [e.data for e in events if e.type == h.SIGNAL_RECEIVED] == [
        {"name": "add", "payload": 2}, {"name": "greet", "payload": "ada"}, {"name": "add", "payload": 3},
        {"name": "greet", "payload": "bob"}, {"name": "finish", "payload": 2}]
    assert events[-1].data["result"] == {"name": "golden", "total": 5, "greetings": ["hello ada", "hello bob"]}


def test_signal_golden_history_replays_command_for_command():
    data, events = load(SIGNALS)
    inst = WorkflowInstance(definition_of(g.golden_signals), info_of(data, events), events[0].data["input"])
    for marker, inputs, recorded in batches(events):
        produced = inst.activate(marker, inputs)
        assert [(c.seq, c.type, strip(c.data)) for c in produced] == \
               [(e.seq, e.type, strip(e.data)) for e in recorded], f"batch at seq {marker.seq}"
    assert inst.closed


def test_signal_golden_history_replays_and_answers_a_query():
    inst = replay_file(SIGNALS, g.golden_signals)
    assert inst.closed
    assert inst.messages.query("total", []) == 5
    _, events = load(SIGNALS)
    # Replayed up to the second batch only: the query sees that moment's state.
    assert replay_file(SIGNALS, g.golden_signals, events[:6]).messages.query("total", []) == 2


def test_changed_signal_code_diverges_at_the_timer():
    assert divergence(SIGNALS, changed_workflows.golden_signals_no_timeout) == (3, "TimerStarted", None)


def test_cli_replay_of_the_signal_golden(in_histories):
    ok = CliRunner().invoke(cli, ["replay", SIGNALS, "-m", "golden_workflows", "--json"])
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    bad = CliRunner().invoke(cli, ["replay", SIGNALS, "-m", "changed_workflows", "--json"])
    assert bad.exit_code == 1
    assert {k: json.loads(bad.stdout)["divergence"][k] for k in ("seq", "expected", "produced")} == {
        "seq": 3, "expected": "TimerStarted", "produced": None}


@pytest.mark.parametrize("cut", [3, 5, 13])  # batch boundaries
def test_an_open_prefix_of_the_signal_history_replays_then_continues(cut):
    """A cold cache mid-run: replay what is recorded, then the next batch runs live."""
    _, events = load(SIGNALS)
    inst = replay_file(SIGNALS, g.golden_signals, events[:cut])
    assert not inst.closed
    rest = events[cut:]
    marker, inputs, recorded = batches([events[0], *rest])[0]
    produced = inst.activate(marker, inputs)
    assert [(c.seq, c.type) for c in produced] == [(e.seq, e.type) for e in recorded]
