"""OpenTelemetry spans for start, workflow tasks and activity attempts; log records carry
workflow and run ids (quiet-during-replay is covered by the unit tests)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cairn import activity, workflow

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)
    return _exporter


@activity.defn
async def shout(text: str) -> str:
    return text.upper()


@workflow.defn
async def traced(text: str) -> str:
    workflow.logger.info("before activity %s", text)
    out: str = await workflow.execute_activity(shout, text, start_to_close_timeout=timedelta(seconds=10))
    workflow.logger.info("after activity")
    return out


async def test_spans_and_log_records(client, start_worker, spans, caplog):
    spans.clear()
    caplog.set_level(logging.INFO, logger="cairn.workflow")
    await start_worker(workflows=[traced], activities=[shout])
    handle = await client.start(traced, "hi", id="otel-1")
    assert await handle.result(timeout=20) == "HI"

    names = [s.name for s in spans.get_finished_spans()]
    assert "cairn.start_workflow" in names
    assert names.count("cairn.workflow_task") >= 2
    assert "cairn.activity" in names
    act = next(s for s in spans.get_finished_spans() if s.name == "cairn.activity")
    assert act.attributes["cairn.workflow_id"] == "otel-1"
    assert act.attributes["cairn.activity"] == "shout"
    assert act.attributes["cairn.attempt"] == 1

    records = [r for r in caplog.records if r.name == "cairn.workflow"]
    assert [r.getMessage() for r in records] == ["before activity hi", "after activity"]
    assert all(r.workflow_id == "otel-1" and r.run_id == handle.run_id for r in records)
