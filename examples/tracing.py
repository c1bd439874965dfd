"""Tracing and metrics: wire the OpenTelemetry SDK, run one workflow, see one trace.

    python examples/tracing.py            # embedded Postgres, or CAIRN_DATABASE_URL

Cairn talks to opentelemetry-api only; whichever SDK and exporters you configure get its
spans (``cairn.start_workflow`` -> ``cairn.workflow_task`` -> ``cairn.activity``, all one
trace) and metrics (``cairn.workflows.*``, ``cairn.activity.*``, ``cairn.queue.depth``...).
Here: the console exporters of opentelemetry-sdk (``pip install opentelemetry-sdk``).
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from cairn import Client, RetryPolicy, Worker, activity, workflow

# Set the providers before the first start: the start's span context goes into the run's
# WorkflowStarted event, and every worker parents its spans on it.
resource = Resource.create({"service.name": "cairn-example"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(tracer_provider)
metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[
    PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)]))

_calls = {"n": 0}


@activity.defn
async def fetch_price(item: str) -> float:
    _calls["n"] += 1
    if _calls["n"] == 1:
        raise RuntimeError("the price service blinked")  # a retry: a second activity span
    return 9.5


@workflow.defn
async def quote(item: str) -> str:
    price = await workflow.execute_activity(
        fetch_price, item, start_to_close_timeout=timedelta(seconds=10),
        retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)))
    return f"{item}: {price:.2f}"


async def main() -> None:
    url = os.environ.get("CAIRN_DATABASE_URL")
    async with Worker(url, workflows=[quote], activities=[fetch_price]), await Client.connect(url) as client:
        handle = await client.start(quote, "tea")
        print(await handle.result(timeout=30))
    metrics.get_meter_provider().force_flush()  # type: ignore[attr-defined]


if __name__ == "__main__":
    asyncio.run(main())
