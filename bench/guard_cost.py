"""What the determinism guard costs per workflow activation.

    PYTHONPATH=src .venv/bin/python bench/guard_cost.py [--replays 1000] [--steps 10]

Records a run of a workflow of ``--steps`` activities in sequence (with the instance
harness, no database), then replays that history ``--replays`` times without the guard
and with it (the profile hook is set during each activation), and prints microseconds per
activation and the ratio. It also prints the per-call cost of the rejected alternative,
wrapping ``time.monotonic`` in a context-variable check (what patching module attributes
would add to every clock read of the whole process, workflow or not).
"""

from __future__ import annotations

import argparse
import contextvars
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cairn import activity, workflow
from cairn.engine import history as h
from cairn.engine import loop as loop_module
from cairn.engine.history import Event
from cairn.engine.instance import WorkflowInstance, replay
from cairn.workflow import WorkflowInfo, definition_of

TIMEOUT = timedelta(seconds=60)
RUN_ID = "018f3a4b-5c6d-7e8f-9a0b-1c2d3e4f5a6b"


@activity.defn
async def inc(x: int) -> int:
    return x + 1


@workflow.defn
async def sequence(x: int, steps: int) -> int:
    """A representative workflow: steps activities in sequence, a log line and a uuid each."""
    for i in range(steps):
        x = await workflow.execute_activity(inc, x, start_to_close_timeout=TIMEOUT)
        workflow.logger.debug("step %d -> %d at %s (%s)", i, x, workflow.now(), workflow.uuid4())
    return x


def record(steps: int) -> tuple[WorkflowInfo, list[Event]]:
    """Runs the workflow live, answering each activity, and returns its history."""
    definition = definition_of(sequence)
    info = WorkflowInfo("bench", RUN_ID, definition.name, "default", "default", datetime(2024, 5, 1, tzinfo=UTC))
    inst = WorkflowInstance(definition, info, [0, steps])
    events = [Event(1, h.WORKFLOW_STARTED, {"input": [0, steps]})]
    inputs: list[Event] = []
    while not inst.closed:
        marker = Event(events[-1].seq + 1, h.WORKFLOW_TASK_STARTED, {"time": 1714521600.0 + len(events)})
        inputs = [Event(marker.seq + 1 + i, e.type, e.data) for i, e in enumerate(inputs)]
        commands = inst.activate(marker, inputs)
        events += [marker, *inputs, *(c.as_event() for c in commands)]
        inputs = [Event(0, h.ACTIVITY_COMPLETED, {"activity_seq": c.seq, "result": c.data["input"][0] + 1})
                  for c in commands if c.type == h.ACTIVITY_SCHEDULED]
    return info, events


def time_replays(info: WorkflowInfo, events: list[Event], replays: int, rounds: int = 5) -> float:
    """Median over rounds of microseconds per activation."""
    definition = definition_of(sequence)
    activations = sum(e.type == h.WORKFLOW_TASK_STARTED for e in events)
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(replays // rounds):
            replay(definition, info, events).dispose()
        per_round.append((time.perf_counter() - start) / (replays // rounds) / activations * 1e6)
    return statistics.median(per_round)


def wrapped_clock_cost(calls: int = 1_000_000) -> tuple[float, float]:
    """ns per call of time.monotonic, bare and behind a context-variable check."""
    flag: contextvars.ContextVar[bool] = contextvars.ContextVar("flag", default=False)
    bare = time.monotonic

    def guarded() -> float:
        if flag.get():
            raise RuntimeError("no clock in workflows")
        return bare()

    out = []
    for fn in (bare, guarded):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - start) / calls * 1e9)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replays", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    info, events = record(args.steps)
    activations = sum(e.type == h.WORKFLOW_TASK_STARTED for e in events)
    time_replays(info, events, 50)  # warm up
    without: Any = time_replays(info, events, args.replays)
    loop_module.install_guard()  # from here on every activation runs under the guard
    with_guard: Any = time_replays(info, events, args.replays)
    bare, wrapped = wrapped_clock_cost()
    print(f"{args.steps} activities in sequence, {activations} activations per run, {args.replays} replays")
    print(f"without guard: {without:7.1f} us per activation")
    print(f"with guard:    {with_guard:7.1f} us per activation  (x{with_guard / without:.2f}, "
          f"+{with_guard - without:.1f} us)")
    print(f"rejected alternative, a wrapped clock: {bare:.0f} ns -> {wrapped:.0f} ns per time.monotonic() call")


if __name__ == "__main__":
    main()
