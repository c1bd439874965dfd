"""OpenTelemetry hooks: spans and metrics through opentelemetry-api, no-ops unless an SDK is set up."""

from __future__ import annotations

from opentelemetry import metrics, trace

tracer = trace.get_tracer("cairn")
meter = metrics.get_meter("cairn")
