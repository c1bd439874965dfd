"""OpenTelemetry traces and metrics, structured logs.

One tracer provider (in-memory exporter) and one meter provider (in-memory reader) for
the module: OpenTelemetry's global providers can be set once per process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cairn import ApplicationError, activity, workflow
from cairn import telemetry as _telemetry
from cairn.logformat import JsonFormatter
from support import events, wait_until

from .observability_flows import traced_retry

HERE = Path(__file__).resolve().parent
_exporter = InMemorySpanExporter()
_reader = InMemoryMetricReader()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    return _exporter


@pytest.fixture
def reader(spans: InMemorySpanExporter) -> InMemoryMetricReader:
    return _reader


@activity.defn
async def shout(text: str) -> str:
    return text.upper()


@workflow.defn
async def traced(text: str) -> str:
    workflow.logger.info("before activity %s", text)
    out: str = await workflow.execute_activity(shout, text, start_to_close_timeout=timedelta(seconds=10))
    workflow.logger.info("after activity")
    return out


@workflow.defn
async def fails_at_once(text: str) -> str:
    raise ApplicationError(f"no {text}", non_retryable=True)


def of_workflow(spans: InMemorySpanExporter, workflow_id: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if (s.attributes or {}).get("cairn.workflow_id") == workflow_id]


def task_count(sql: Any, run_id: str) -> int:
    return sum(1 for _, t, _ in events(sql, run_id) if t == "WorkflowTaskStarted")


async def test_spans_and_log_records(client, start_worker, spans, caplog):
    spans.clear()
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    await start_worker(workflows=[traced], activities=[shout])
    handle = await client.start(traced, "hi", id="otel-1")
    assert await handle.result(timeout=20) == "HI"
    # An attempt's span ends once its outcome is written: the run may close just before.
    await wait_until(lambda: any(s.name == "cairn.activity" for s in spans.get_finished_spans()), what="span")

    names = [s.name for s in spans.get_finished_spans()]
    assert "cairn.start_workflow" in names
    assert names.count("cairn.workflow_task") >= 2
    assert "cairn.activity" in names
    act = next(s for s in spans.get_finished_spans() if s.name == "cairn.activity")
    assert act.attributes["cairn.workflow_id"] == "otel-1"
    assert act.attributes["cairn.activity"] == "shout"
    assert act.attributes["cairn.attempt"] == 1
    assert act.attributes["cairn.outcome"] == "completed"

    records = [r for r in caplog.records if r.name == "cairn.workflow"]
    assert [r.getMessage() for r in records] == ["before activity hi", "after activity"]
    assert all(r.workflow_id == "otel-1" and r.run_id == handle.run_id for r in records)


async def test_one_trace_from_start_to_every_attempt_and_no_spans_for_replay(client, start_worker, spans, sql,
                                                                            caplog):
    spans.clear()
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    first = await start_worker(workflows=[traced_retry], activities=[traced_retry_activity()])
    handle = await client.start(traced_retry, "hey", id="otel-trace")
    # The first activity ran twice (a retry) and the run waits for "go".
    await wait_until(lambda: any(t == "ActivityCompleted" for _, t, _ in events(sql, handle.run_id))
                     and task_count(sql, handle.run_id) >= 2, timeout=20, what="the first activity")
    first.stop()  # it claims nothing more (the fixture waits for it at teardown)
    # A new worker: its cache is empty, the next task replays the whole history.
    second = await start_worker(workflows=[traced_retry], activities=[traced_retry_activity()])
    await handle.signal("go")
    assert await handle.result(timeout=20) == "HEY HEY!"
    assert second.stats.cache_misses >= 1
    await wait_until(lambda: sum(s.name == "cairn.activity" for s in of_workflow(spans, "otel-trace")) >= 4,
                     what="the last attempt's span")

    mine = of_workflow(spans, "otel-trace")
    start = [s for s in mine if s.name == "cairn.start_workflow"]
    tasks = [s for s in mine if s.name == "cairn.workflow_task"]
    attempts = [s for s in mine if s.name == "cairn.activity"]
    assert len(start) == 1
    # One trace: the client's start, every workflow task, every activity attempt.
    assert {s.context.trace_id for s in mine} == {start[0].context.trace_id}
    # Workflow tasks are children of the start; attempts, of the task that scheduled them.
    assert all(s.parent is not None and s.parent.span_id == start[0].context.span_id for s in tasks)
    task_ids = {s.context.span_id for s in tasks}
    assert all(s.parent is not None and s.parent.span_id in task_ids for s in attempts)
    # One span per task run and per attempt: the replay on the second worker added none.
    assert len(tasks) == task_count(sql, handle.run_id)
    tried = sorted((s.attributes["cairn.activity_seq"], s.attributes["cairn.attempt"]) for s in attempts)
    (s1, _), (s2, _) = tried[0], tried[-1]
    assert s1 < s2
    assert tried == [(s1, 1), (s1, 2), (s2, 1), (s2, 2)]
    assert sorted(s.attributes["cairn.outcome"] for s in attempts) == ["completed", "completed", "failed", "failed"]
    assert all(s.attributes["cairn.workflow_type"] == "traced_retry" and s.attributes["cairn.run_id"] == handle.run_id
               for s in attempts)
    # The trace context is data of WorkflowStarted; activity rows carried it in their options.
    started = events(sql, handle.run_id)[0][2]
    assert started["trace"]["traceparent"].split("-")[1] == format(start[0].context.trace_id, "032x")
    # workflow.logger was quiet while the second worker replayed: one "starting" record.
    starting = [r for r in caplog.records if r.name == "cairn.workflow" and r.getMessage() == "starting hey"]
    assert len(starting) == 1


def traced_retry_activity() -> Any:
    from .observability_flows import flaky_shout

    return flaky_shout


def _worker_script(span_file: Path) -> str:
    return textwrap.dedent(f"""
        import sys
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
        out = open({str(span_file)!r}, "w")
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=out, formatter=lambda s: s.to_json(indent=None) + "\\n")))
        trace.set_tracer_provider(provider)
        from cairn.cli import main
        main(sys.argv[1:])
    """)


@pytest.fixture
def worker_process(db_url: str, tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []
    files: list[Any] = []

    def start(span_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
        script = tmp_path / "traced_worker.py"
        script.write_text(_worker_script(span_file))
        files.append(log_file.open("wb"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(
            [sys.executable, str(script), "--database-url", db_url, "-v", "worker", "-m", "observability_flows",
             "--poll-interval", "0.2", "--log-format", "json"],
            cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=files[-1])
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for f in files:
        f.close()


async def test_trace_crosses_into_a_worker_process_through_the_database(client, spans, sql, tmp_path,
                                                                        worker_process):
    """The start span is in this process; tasks and attempts in a worker subprocess with
    its own SDK: they share the trace id, which only the database carried across."""
    spans.clear()
    span_file, log_file = tmp_path / "spans.jsonl", tmp_path / "worker.log"
    proc = worker_process(span_file, log_file)
    await wait_until(lambda: proc.poll() is None and b" running " in log_file.read_bytes(), timeout=60,
                     what="the worker subprocess")
    handle = await client.start(traced_retry, "far", id="otel-remote")
    await wait_until(lambda: any(t == "WorkflowTaskStarted" for _, t, _ in events(sql, handle.run_id)), timeout=30)
    await handle.signal("go")
    assert await handle.result(timeout=30) == "FAR FAR!"

    start = next(s for s in of_workflow(spans, "otel-remote") if s.name == "cairn.start_workflow")
    trace_id = f"0x{start.context.trace_id:032x}"
    def remote_spans() -> list[dict[str, Any]]:
        found = [json.loads(line) for line in span_file.read_text().splitlines() if line.strip()]
        return [s for s in found if s["attributes"].get("cairn.workflow_id") == "otel-remote"]

    # The last attempt's span ends just after its outcome is written: the run may close first.
    await wait_until(lambda: sum(s["name"] == "cairn.activity" for s in remote_spans()) >= 4, timeout=10,
                     what="the last attempt's span")
    remote = remote_spans()
    tasks = [s for s in remote if s["name"] == "cairn.workflow_task"]
    attempts = [s for s in remote if s["name"] == "cairn.activity"]
    assert len(tasks) == task_count(sql, handle.run_id) >= 3
    assert len(attempts) == 4
    assert {s["context"]["trace_id"] for s in remote} == {trace_id}
    assert {s["parent_id"] for s in tasks} == {f"0x{start.context.span_id:016x}"}

    # --log-format json: every stderr line is a JSON object; attempt records carry the fields.
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    assert any(r["message"].startswith("worker ") and " running " in r["message"] for r in lines)
    flaky = [r for r in lines if r["message"].startswith("flaky_shout attempt")]
    assert len(flaky) == 4
    assert all(r.get("workflow_id") is None for r in flaky)  # the user's own logger adds none...
    retried = [r for r in lines if r["logger"] == "cairn.worker" and "retry in" in r["message"]]
    assert len(retried) == 2
    assert all(r["workflow_id"] == "otel-remote" and r["run_id"] == handle.run_id and r["activity"] == "flaky_shout"
               and r["attempt"] == 1 and r["trace_id"] == trace_id[2:] for r in retried)
    # ...and workflow code's workflow.logger adds workflow id, run id and type.
    (wf,) = [r for r in lines if r["logger"] == "cairn.workflow"]
    assert (wf["message"], wf["workflow_id"], wf["run_id"], wf["workflow_type"]) == (
        "starting far", "otel-remote", handle.run_id, "traced_retry")


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == name
            for p in m.data.data_points]


def _sum(reader: InMemoryMetricReader, name: str, **attrs: Any) -> float:
    return sum(p.value for p in _points(reader, name) if all(p.attributes.get(k) == v for k, v in attrs.items()))


def _count(reader: InMemoryMetricReader, name: str, **attrs: Any) -> int:
    return sum(p.count for p in _points(reader, name) if all(p.attributes.get(k) == v for k, v in attrs.items()))


async def test_metrics(client, start_worker, reader, sql):
    before = {"started": _sum(reader, "cairn.workflows.started", workflow_type="traced_retry"),
              "completed": _sum(reader, "cairn.workflows.closed", workflow_type="traced_retry", status="completed"),
              "failed": _sum(reader, "cairn.workflows.closed", workflow_type="fails_at_once", status="failed"),
              "retries": _sum(reader, "cairn.activity.retries", activity="flaky_shout"),
              "attempts": _count(reader, "cairn.activity.duration", activity="flaky_shout"),
              "s2s": _count(reader, "cairn.activity.schedule_to_start", activity="flaky_shout"),
              "tasks": _count(reader, "cairn.workflow_task.duration", workflow_type="traced_retry")}
    await start_worker(workflows=[traced_retry, fails_at_once], activities=[traced_retry_activity()])
    ok = await client.start(traced_retry, "m", id="metrics-ok")
    bad = await client.start(fails_at_once, "m", id="metrics-bad")
    await wait_until(lambda: any(t == "ActivityCompleted" for _, t, _ in events(sql, ok.run_id)), timeout=20)
    await ok.signal("go")
    assert await ok.result(timeout=20) == "M M!"
    await wait_until(lambda: _count(reader, "cairn.activity.duration", activity="flaky_shout")
                     >= before["attempts"] + 4, what="the last attempt's duration")
    with pytest.raises(Exception, match="m"):
        await bad.result(timeout=20)

    assert _sum(reader, "cairn.workflows.started", workflow_type="traced_retry") == before["started"] + 1
    assert _sum(reader, "cairn.workflows.closed", workflow_type="traced_retry", status="completed") == \
        before["completed"] + 1
    assert _sum(reader, "cairn.workflows.closed", workflow_type="fails_at_once", status="failed") == \
        before["failed"] + 1
    assert _sum(reader, "cairn.activity.retries", activity="flaky_shout") == before["retries"] + 2
    assert _count(reader, "cairn.activity.duration", activity="flaky_shout") == before["attempts"] + 4
    assert _count(reader, "cairn.activity.duration", activity="flaky_shout", outcome="failed") >= 2
    assert _count(reader, "cairn.activity.schedule_to_start", activity="flaky_shout") == before["s2s"] + 2
    tasks = sum(1 for _, t, _ in events(sql, ok.run_id) if t == "WorkflowTaskStarted")
    assert _count(reader, "cairn.workflow_task.duration", workflow_type="traced_retry") == before["tasks"] + tasks


async def test_queue_depth_gauge(client, start_worker, reader, monkeypatch):
    monkeypatch.setattr(_telemetry.queue_depth, "interval", 0.2)
    # A worker of queue "depth" that runs no workflows: the workflow tasks wait there.
    await start_worker(activities=[shout], queues=["depth"])
    for i in range(3):
        await client.start(traced, "x", id=f"depth-{i}", queue="depth")

    def depth() -> Any:
        points = [p for p in _points(reader, "cairn.queue.depth") if p.attributes.get("queue") == "depth"]
        return {p.attributes["kind"]: p.value for p in points} if points else None

    assert await wait_until(lambda: depth() == {"workflow": 3, "activity": 0}, timeout=20, what="queue depth")


def test_json_formatter_fields_and_order():
    record = logging.LogRecord("cairn.worker", logging.INFO, __file__, 1, "attempt %d failed", (2,), None)
    for k, v in {"attempt": 2, "activity": "charge", "run_id": "r", "workflow_id": "w", "custom": [1]}.items():
        setattr(record, k, v)
    line = JsonFormatter().format(record)
    out = json.loads(line)
    assert list(out)[:8] == ["time", "level", "logger", "message", "workflow_id", "run_id", "activity", "attempt"]
    assert (out["message"], out["custom"], out["level"]) == ("attempt 2 failed", [1], "INFO")
    assert "\n" not in line
