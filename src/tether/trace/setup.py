"""Tracing set-up: spans go to the store, and to any OTLP collector the standard variables name.

Nothing is traced until ``configure_tracing`` is called: the OpenTelemetry API
is a no-op without a provider, so importing tether costs nothing.
"""

from __future__ import annotations

import os
from importlib.metadata import version

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Tracer

from tether.store import TraceStore
from tether.trace.exporter import StoreSpanExporter

__all__ = ["Tracing", "configure_tracing", "otlp_configured"]

_OTLP_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def otlp_configured() -> bool:
    """True when a standard ``OTEL_EXPORTER_OTLP_*`` endpoint variable is set."""
    return any(os.environ.get(v) for v in _OTLP_VARS)


class Tracing:
    """A configured tracer provider and what it exports to."""

    def __init__(self, provider: TracerProvider, exporters: list[str]) -> None:
        self.provider = provider
        self.exporters = exporters

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("tether", version("tether"))

    def flush(self, timeout_ms: int = 30_000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()


def configure_tracing(
    store: TraceStore | None,
    *,
    extra_exporters: list[SpanExporter] | None = None,
    batch: bool = True,
    set_global: bool = False,
) -> Tracing:
    """Build a tracer provider that writes spans to ``store`` (and OTLP, when configured).

    Args:
        store: where spans are kept; None for none (OTLP or extra exporters only).
        extra_exporters: more exporters (tests use an in-memory one).
        batch: batch spans off the request path (True) or export each as it ends.
        set_global: also install it as OpenTelemetry's global provider, so other
            instrumentation in the process joins the same traces. Only once per process.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": "tether"}))
    processor = BatchSpanProcessor if batch else SimpleSpanProcessor
    names: list[str] = []
    if store is not None:
        # Large batches: the store takes them in one executemany each.
        if batch:
            provider.add_span_processor(
                BatchSpanProcessor(StoreSpanExporter(store), max_queue_size=65_536, max_export_batch_size=2_048)
            )
        else:
            provider.add_span_processor(SimpleSpanProcessor(StoreSpanExporter(store)))
        names.append("store")
    if otlp_configured():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(processor(OTLPSpanExporter()))
        names.append("otlp")
    for exporter in extra_exporters or ():
        provider.add_span_processor(processor(exporter))
        names.append(type(exporter).__name__)
    if set_global:
        otel_trace.set_tracer_provider(provider)
    return Tracing(provider, names)
