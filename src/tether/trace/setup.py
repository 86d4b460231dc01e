"""Tracing set-up: spans go to the store, and to any OTLP collector the standard variables name.

Nothing is traced until ``configure_tracing`` is called: the OpenTelemetry API
is a no-op without a provider, so importing tether costs nothing.

Two providers, one API. When spans only go to tether's store, tether's own
recorder (``tether.trace.recorder``) implements the OpenTelemetry API at a
fraction of the SDK's per-span cost. When spans must also leave the process
(``OTEL_EXPORTER_OTLP_*`` set, or extra exporters passed), the OpenTelemetry
SDK's ``TracerProvider`` is used, with the store fed by ``StoreSpanProcessor``
and the exporters by ``BatchSpanProcessor``; the store receives the same rows
either way (tests compare the two paths).

Known secret values never leave through either: rows are scrubbed where they
are built, every exporter is wrapped in ``ScrubbingSpanExporter``, and log
records are scrubbed as they are created (``tether.redaction``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import version

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Tracer

from tether.redaction import install_log_scrubbing
from tether.store import TraceStore
from tether.trace.exporter import ScrubbingSpanExporter
from tether.trace.processor import RowWriter, StoreSpanProcessor
from tether.trace.recorder import RecordingTracerProvider

__all__ = ["Tracing", "configure_tracing", "otlp_configured"]

_OTLP_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def otlp_configured() -> bool:
    """True when a standard ``OTEL_EXPORTER_OTLP_*`` endpoint variable is set."""
    return any(os.environ.get(v) for v in _OTLP_VARS)


class Tracing:
    """A configured tracer provider and what it exports to.

    Attributes:
        provider: the OpenTelemetry ``TracerProvider`` (SDK or tether's recorder).
        exporters: where spans go, e.g. ``["store"]`` or ``["store", "otlp"]``.
    """

    def __init__(
        self,
        provider: otel_trace.TracerProvider,
        exporters: list[str],
        flush: Callable[[int], bool],
        shutdown: Callable[[], None],
    ) -> None:
        self.provider = provider
        self.exporters = exporters
        self._flush = flush
        self._shutdown = shutdown

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("tether", version("tether"))

    def flush(self, timeout_ms: int = 30_000) -> bool:
        """Write every finished span now; False if some could not be written."""
        return self._flush(timeout_ms)

    def shutdown(self) -> None:
        """Flush and stop; spans ended afterwards are dropped."""
        self._shutdown()


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
        batch: batch exporters' spans off the request path (True) or export each as it ends.
        set_global: also install it as OpenTelemetry's global provider, so other
            instrumentation in the process joins the same traces. Only once per process.
    """
    install_log_scrubbing()
    otlp = otlp_configured()
    if store is not None and not otlp and not extra_exporters:
        writer = RowWriter(store)
        recorder = RecordingTracerProvider(writer)
        if set_global:
            otel_trace.set_tracer_provider(recorder)
        return Tracing(recorder, ["store"], lambda _ms: writer.flush(), writer.shutdown)

    # ALWAYS_ON rather than the default parent-based sampler: an agent run is traced
    # whatever an upstream caller decided, because the trace *is* the run's record.
    provider = TracerProvider(resource=Resource.create({"service.name": "tether"}), sampler=ALWAYS_ON)
    processor = BatchSpanProcessor if batch else SimpleSpanProcessor
    names: list[str] = []
    if store is not None:
        provider.add_span_processor(StoreSpanProcessor(RowWriter(store)))
        names.append("store")
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(processor(ScrubbingSpanExporter(OTLPSpanExporter())))
        names.append("otlp")
    for exporter in extra_exporters or ():
        provider.add_span_processor(processor(ScrubbingSpanExporter(exporter)))
        names.append(type(exporter).__name__)
    if set_global:
        otel_trace.set_tracer_provider(provider)
    return Tracing(provider, names, provider.force_flush, provider.shutdown)
