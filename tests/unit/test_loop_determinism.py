"""Deterministic helpers (time, randomness, info), the I/O guard, and the replay-quiet logger."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cairn import CairnError, workflow
from cairn.engine import history as h
from cairn.engine import loop as loop_module
from cairn.engine.instance import replay
from cairn.errors import DeterminismViolation, WorkflowTaskFailed

from .harness import OTHER_RUN_ID, RUN_ID, T0, Driver, fired


@workflow.defn
async def identity() -> dict[str, Any]:
    first = workflow.now()
    rng = workflow.random()
    values = [rng.random(), rng.randint(0, 10**9)]
    ids = [str(workflow.uuid4()), str(workflow.uuid4())]
    i = workflow.info()
    await asyncio.sleep(60)
    return {
        "first": first.isoformat(), "second": workflow.now().isoformat(), "values": values, "ids": ids,
        "info": [i.workflow_id, i.run_id, i.workflow_type, i.queue, i.namespace],
        "replaying": workflow.unsafe_is_replaying(), "in_workflow": workflow.in_workflow(),
    }


def run_identity(run_id: str = RUN_ID, workflow_id: str = "wf-1") -> dict[str, Any]:
    d = Driver(identity, run_id=run_id, workflow_id=workflow_id)
    d.activate(after=5)  # the first task runs 5 s after the run was created
    d.activate(fired(3), after=61)
    return d.result


def test_now_is_the_time_of_the_current_workflow_task():
    out = run_identity()
    assert out["first"] == (T0 + timedelta(seconds=5)).isoformat()
    assert out["second"] == (T0 + timedelta(seconds=66)).isoformat()


def test_info_describes_the_run():
    out = run_identity(workflow_id="order-17")
    assert out["info"] == ["order-17", RUN_ID, "identity", "default", "default"]
    assert out["replaying"] is False
    assert out["in_workflow"] is True


def test_random_and_uuid4_are_seeded_by_the_run_id():
    a, b = run_identity(), run_identity()
    assert (a["values"], a["ids"]) == (b["values"], b["ids"])
    other = run_identity(run_id=OTHER_RUN_ID)
    assert other["values"] != a["values"]
    assert other["ids"] != a["ids"]
    assert a["ids"][0] != a["ids"][1]
    assert all(uuid.UUID(x).version == 4 for x in a["ids"] + other["ids"])


def test_deterministic_helpers_refuse_to_work_outside_workflow_code():
    for helper in (workflow.now, workflow.random, workflow.uuid4, workflow.info, workflow.unsafe_is_replaying):
        with pytest.raises(CairnError, match="only inside workflow code"):
            helper()
    assert workflow.in_workflow() is False
    assert loop_module.in_workflow() is False


# -- the I/O guard


@pytest.fixture
def guard() -> None:
    loop_module.install_guard()  # what the worker does at start; idempotent


def task_failure(fn: Any, *args: Any) -> BaseException:
    with pytest.raises(WorkflowTaskFailed) as info:
        Driver(fn, *args).activate()
    return info.value.cause


@workflow.defn
async def flag_inside() -> list[bool]:
    async def child() -> bool:
        return loop_module.in_workflow()

    return [loop_module.in_workflow(), await asyncio.create_task(child())]


def test_loop_in_workflow_is_true_inside_workflow_code():
    # The audit hook relies on this flag; it must be visible in the workflow's tasks.
    d = Driver(flag_inside)
    d.activate()
    assert d.result == [True, True]


@workflow.defn
async def writes_file(path: str) -> str:
    with open(path, "w") as f:  # noqa: ASYNC230 (the point of the test)
        f.write("side effect")
    return "wrote"


def test_opening_a_file_for_writing_fails_the_task(guard, tmp_path):
    target = tmp_path / "out.txt"
    cause = task_failure(writes_file, str(target))
    assert isinstance(cause, DeterminismViolation)
    assert "out.txt" in str(cause)
    assert not target.exists()


@workflow.defn
async def reads_file(path: str) -> str:
    with open(path) as f:  # noqa: ASYNC230 (the point of the test)
        return f.read()


def test_reading_a_data_file_fails_the_task(guard, tmp_path):
    target = tmp_path / "config.json"
    target.write_text("{}")  # outside workflow code, I/O is fine
    assert isinstance(task_failure(reads_file, str(target)), DeterminismViolation)


@workflow.defn
async def connects() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        s.connect(("127.0.0.1", 9))
    return "connected"


def test_socket_connect_fails_the_task(guard):
    cause = task_failure(connects)
    assert isinstance(cause, DeterminismViolation)
    assert "socket.connect" in str(cause)


@workflow.defn
async def spawns() -> int:
    return subprocess.run(["true"], check=False).returncode  # noqa: ASYNC221


def test_subprocess_fails_the_task(guard):
    assert isinstance(task_failure(spawns), DeterminismViolation)


@workflow.defn
async def opens_connection() -> None:
    await asyncio.open_connection("127.0.0.1", 9)


@workflow.defn
async def uses_thread() -> None:
    await asyncio.to_thread(print, "from a thread")


@workflow.defn
async def threadsafe_call() -> None:
    asyncio.get_running_loop().call_soon_threadsafe(print)


@pytest.mark.parametrize("fn", [opens_connection, uses_thread, threadsafe_call])
def test_loop_level_io_and_threads_fail_the_task(fn):
    # These are refused by the loop itself, with or without the audit hook.
    assert isinstance(task_failure(fn), DeterminismViolation)


@workflow.defn
async def lazy_import(name: str) -> int:
    module = __import__(name)
    return int(module.VALUE)


def test_lazy_import_inside_workflow_code_is_allowed_even_when_it_writes_bytecode(guard, tmp_path, monkeypatch):
    name = f"cairn_lazy_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    try:
        d = Driver(lazy_import, name)
        assert [c.type for c in d.activate()] == [h.WORKFLOW_COMPLETED]
        assert d.result == 7
    finally:
        sys.modules.pop(name, None)


def test_io_outside_workflow_code_is_unaffected_by_the_guard(guard, tmp_path):
    target = tmp_path / "ok.txt"
    target.write_text("fine")
    assert target.read_text() == "fine"
    assert Path(target).exists()


# -- logging


@workflow.defn
async def chatty() -> str:
    workflow.logger.info("starting %s", "chatty")
    await asyncio.sleep(1)
    workflow.logger.warning("after the timer")
    return "done"


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cairn.workflow"]


def test_workflow_logger_emits_live_with_run_ids(caplog):
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    d = Driver(chatty, workflow_id="chatty-1")
    d.activate()
    assert messages(caplog) == ["starting chatty"]
    (record,) = [r for r in caplog.records if r.name == "cairn.workflow"]
    assert (record.workflow_id, record.run_id, record.workflow_type) == ("chatty-1", RUN_ID, "chatty")


def test_workflow_logger_is_silent_while_replaying(caplog):
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    d = Driver(chatty)
    d.instance.replaying = True
    d.activate()
    d.activate(fired(3), after=1)
    assert d.result == "done"
    assert messages(caplog) == []


def test_replay_then_live_continuation_logs_only_the_new_part(caplog):
    live = Driver(chatty)
    live.activate()
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    caplog.clear()
    # A worker with a cold cache replays the history so far, then runs the new batch live.
    inst = replay(live.definition, live.info, live.history)
    assert messages(caplog) == []
    assert inst.replaying is False
    marker = h.Event(4, h.WORKFLOW_TASK_STARTED, {"time": T0.timestamp() + 1})
    cmds = inst.activate(marker, [h.Event(5, h.TIMER_FIRED, {"timer_seq": 3})])
    assert [c.type for c in cmds] == [h.WORKFLOW_COMPLETED]
    assert messages(caplog) == ["after the timer"]
