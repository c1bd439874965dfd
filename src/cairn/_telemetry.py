"""OpenTelemetry hooks: spans through opentelemetry-api, no-ops unless an SDK is set up."""

from __future__ import annotations

from opentelemetry import trace

tracer = trace.get_tracer("cairn")
