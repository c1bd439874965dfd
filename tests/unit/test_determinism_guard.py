"""The determinism guard's profile hook: wall clock, global randomness, uuid1/uuid4,
os.urandom/secrets, sleeping and threads inside workflow code fail the workflow task with a
message naming the deterministic alternative; the same calls outside workflow code, the
workflow's own helpers and workflow.logger keep working."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import os
import random
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from time import time as wallclock
from typing import Any

import pytest

from cairn import activity, workflow
from cairn.engine import history as h
from cairn.engine import loop as loop_module
from cairn.errors import DeterminismViolation, WorkflowTaskFailed

from .harness import Driver


@pytest.fixture(autouse=True)
def guard() -> None:
    loop_module.install_guard()  # what the worker does at start; idempotent


def _start_thread() -> None:
    threading.Thread(target=print).start()


def _submit() -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(print)


# name -> (the call, what the message must name, the alternative it must suggest)
CALLS: dict[str, tuple[Callable[[], Any], str, str]] = {
    "time.time": (time.time, "time.time()", "workflow.now()"),
    "time.time_ns": (time.time_ns, "time.time_ns()", "workflow.now()"),
    "time.monotonic": (time.monotonic, "time.monotonic()", "workflow.now()"),
    "time.perf_counter": (time.perf_counter, "time.perf_counter()", "workflow.now()"),
    "aliased time": (wallclock, "time.time()", "workflow.now()"),
    "datetime.now": (dt.datetime.now, "datetime.now()", "workflow.now()"),
    "datetime.now(tz)": (lambda: dt.datetime.now(dt.UTC), "datetime.now()", "workflow.now()"),
    "datetime.utcnow": (dt.datetime.utcnow, "datetime.utcnow()", "workflow.now()"),
    "datetime.today": (dt.datetime.today, "datetime.today()", "workflow.now()"),
    "date.today": (dt.date.today, "date.today()", "workflow.now()"),
    "random.random": (random.random, "random.random()", "workflow.random()"),
    "random.randint": (lambda: random.randint(1, 6), "random.randint()", "workflow.random()"),
    "random.choice": (lambda: random.choice("abc"), "random.choice()", "workflow.random()"),
    "random.shuffle": (lambda: random.shuffle([1, 2]), "random.shuffle()", "workflow.random()"),
    "uuid.uuid4": (uuid.uuid4, "uuid.uuid4()", "workflow.uuid4()"),
    "uuid.uuid1": (uuid.uuid1, "uuid.uuid1()", "workflow.uuid4()"),
    "os.urandom": (lambda: os.urandom(8), "os.urandom()", "activity"),
    "secrets.token_hex": (secrets.token_hex, "secrets.token_hex()", "activity"),
    "secrets.choice": (lambda: secrets.choice("abc"), "secrets.choice()", "activity"),
    "time.sleep": (lambda: time.sleep(0), "time.sleep()", "workflow.sleep()"),
    "Thread.start": (_start_thread, "threading.Thread.start()", "activity"),
    "ThreadPoolExecutor.submit": (_submit, "ThreadPoolExecutor.submit()", "activity"),
}


@workflow.defn
async def calls(name: str) -> str:
    CALLS[name][0]()
    return "called"


@workflow.defn
async def swallows(name: str) -> str:
    try:
        CALLS[name][0]()
    except Exception:  # the user hides the error: the task must fail anyway
        return "swallowed"
    return "called"


@pytest.mark.parametrize("name", list(CALLS))
def test_a_forbidden_call_fails_the_task_naming_the_alternative(name):
    _, called, alternative = CALLS[name]
    with pytest.raises(WorkflowTaskFailed) as info:
        Driver(calls, name).activate()
    cause = info.value.cause
    assert isinstance(cause, DeterminismViolation)
    assert f"workflow code called {called}" in str(cause)
    assert alternative in str(cause)


@pytest.mark.parametrize("name", ["time.time", "datetime.now", "random.randint", "uuid.uuid4", "Thread.start"])
def test_swallowing_the_violation_still_fails_the_task(name):
    d = Driver(swallows, name)
    with pytest.raises(WorkflowTaskFailed) as info:
        d.activate()
    assert isinstance(info.value.cause, DeterminismViolation)
    assert len(d.history) == 1  # nothing recorded


def test_the_guard_is_off_again_after_the_activation():
    with pytest.raises(WorkflowTaskFailed):
        Driver(calls, "time.time").activate()
    assert sys.getprofile() is None
    d = Driver(swallows, "datetime.now")
    with pytest.raises(WorkflowTaskFailed):
        d.activate()


@pytest.mark.parametrize("name", list(CALLS))
def test_the_same_calls_outside_workflow_code_are_untouched(name):
    CALLS[name][0]()


@workflow.defn
async def deterministic_helpers() -> list[Any]:
    workflow.logger.info("at %s", workflow.now().isoformat())
    rng = workflow.random()
    values = [rng.random(), rng.randint(1, 6), rng.choice("abc"), rng.getrandbits(8)]
    rng.shuffle(shuffled := [1, 2, 3, 4])
    ids = str(workflow.uuid4())
    await workflow.sleep(1)
    workflow.logger.warning("woke at %s", workflow.now().isoformat())
    return [values, shuffled, ids, workflow.now().isoformat(), dt.datetime.fromtimestamp(0, dt.UTC).year]


def test_workflow_helpers_and_the_logger_work_under_the_guard(caplog):
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    d = Driver(deterministic_helpers)
    (timer,) = d.activate()
    d.activate((h.TIMER_FIRED, {"timer_seq": timer.seq}), after=1)
    values, shuffled, ids, now, epoch = d.result
    assert len(values) == 4
    assert sorted(shuffled) == [1, 2, 3, 4]
    assert uuid.UUID(ids).version == 4
    assert now == "2024-05-01T12:00:01.250000+00:00"
    assert epoch == 1970
    messages = [r.getMessage() for r in caplog.records if r.name == "cairn.workflow"]
    assert messages == ["at 2024-05-01T12:00:00.250000+00:00", "woke at 2024-05-01T12:00:01.250000+00:00"]
    # The same values on a second run of the same run id: deterministic.
    again = Driver(deterministic_helpers)
    (timer,) = again.activate()
    again.activate((h.TIMER_FIRED, {"timer_seq": timer.seq}), after=1)
    assert again.result == d.result


def test_the_guard_yields_to_a_profiler_that_was_set_before():
    seen: list[str] = []

    def profiler(frame: Any, event: str, arg: Any) -> None:
        seen.append(event)

    sys.setprofile(profiler)
    try:
        Driver(calls, "time.time").activate()  # unguarded while profiled: no error
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert "c_call" in seen


class _StampingFormatter(logging.Formatter):
    """A formatter of the kind JSON loggers use: it reads the wall clock itself."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{dt.datetime.now(dt.UTC).isoformat()} {record.getMessage()}"


def test_a_log_formatter_that_reads_the_clock_is_exempt():
    out: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.append(self.format(record))

    handler = Collect()
    handler.setFormatter(_StampingFormatter())
    logger = logging.getLogger("cairn.workflow")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        d = Driver(deterministic_helpers)
        d.activate()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(out) == 1
    assert out[0].endswith("at 2024-05-01T12:00:00.250000+00:00")


@activity.defn
async def noop(n: int) -> int:
    return n


@workflow.defn
async def schedules_then_calls(name: str) -> str:
    workflow.start_activity(noop, 1, start_to_close_timeout=5)  # runs with the profile hook off ...
    workflow.start_local_activity(noop, 2, start_to_close_timeout=5)
    CALLS[name][0]()  # ... and puts it back
    return "called"


@pytest.mark.parametrize("name", ["time.time", "random.randint", "uuid.uuid4"])
def test_the_guard_is_back_after_scheduling_an_activity(name):
    with pytest.raises(WorkflowTaskFailed) as info:
        Driver(schedules_then_calls, name).activate()
    assert isinstance(info.value.cause, DeterminismViolation)
