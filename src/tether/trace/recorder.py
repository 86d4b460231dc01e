"""tether's own span recorder: the OpenTelemetry tracing *API*, without the SDK's per-span cost.

When spans only go to tether's store (no OTLP export configured), the
OpenTelemetry SDK is more machinery than the job needs: on this machine its
span creation alone — attribute validation through ``BoundedAttributes``,
locks, sampling, the ``ReadableSpan`` copy — cost ~37 µs for a GenAI span,
before anything was exported (benchmarks/RESULTS.md). ``RecordingTracer``
implements the same API (``opentelemetry.trace.Tracer`` and ``Span``), so
context propagation, ``use_span``, ``get_current_span`` and any library's
instrumentation work unchanged, and each span becomes a store row the moment
it ends.

What it keeps of the SDK's semantics: trace/span ids (random, non-zero),
parent from the context, attributes limited to the OpenTelemetry value types
(anything else is stored as its ``str``), events, status, ``record_exception``,
end-once. What it leaves out, because the store has no column for them: links,
resources, instrumentation scopes, attribute count limits.

``configure_tracing`` picks the SDK instead whenever spans must also leave the
process (OTLP, extra exporters).
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import Attributes, AttributeValue

from tether.store.rows import build_row
from tether.trace.exporter import STATUS_NAMES
from tether.trace.processor import Row, RowWriter

__all__ = ["RecordingSpan", "RecordingTracer", "RecordingTracerProvider"]

_PRIMITIVE = (str, bool, int, float)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _clean(value: object) -> Any:
    """An attribute value as OpenTelemetry allows it: primitives, or sequences of them."""
    if type(value) in (str, int, float, bool):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(v if isinstance(v, _PRIMITIVE) else str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None:
        return None
    return value if isinstance(value, _PRIMITIVE) else str(value)


class RecordingSpan(otel_trace.Span):
    """A span that becomes a store row when it ends."""

    __slots__ = ("_attrs", "_context", "_end_ns", "_events", "_name", "_parent", "_start_ns", "_status", "_writer")

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: Attributes,
        start_ns: int,
        writer: RowWriter[Row],
    ) -> None:
        self._name = name
        self._context = context
        self._parent = parent
        self._attrs: dict[str, Any] = {}
        if attributes:
            for key, value in attributes.items():
                self._attrs[key] = _clean(value)
        self._events: list[dict[str, Any]] | None = None
        self._status = Status(StatusCode.UNSET)
        self._start_ns = start_ns
        self._end_ns: int | None = None
        self._writer = writer

    def get_span_context(self) -> SpanContext:
        return self._context

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_ns is None:
            attrs = self._attrs
            for key, value in attributes.items():
                attrs[key] = _clean(value)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_ns is None:
            self._attrs[key] = _clean(value)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end_ns is None:
            if self._events is None:
                self._events = []
            clean = {k: _clean(v) for k, v in (attributes or {}).items()}
            self._events.append({"name": name, "time_ns": timestamp or time.time_ns(), "attributes": clean})

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        """Links are not stored (the store has no place for them)."""

    def update_name(self, name: str) -> None:
        if self._end_ns is None:
            self._name = name

    def is_recording(self) -> bool:
        return self._end_ns is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_ns is not None:
            return
        if isinstance(status, Status):
            new = status
        else:
            new = Status(status, description if status is StatusCode.ERROR else None)
        # As in the SDK: an OK status is final, and UNSET never overrides a set status.
        if self._status.status_code is StatusCode.OK or new.status_code is StatusCode.UNSET:
            return
        self._status = new

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        stack = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        event: dict[str, AttributeValue] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": stack,
            "exception.escaped": str(escaped),
        }
        event.update({k: v for k, v in (attributes or {}).items() if v is not None})
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_ns is not None:
            return
        self._end_ns = end_ns = end_time or time.time_ns()
        parent = self._parent
        status = self._status
        self._writer.add(
            build_row(
                format(self._context.trace_id, "032x"),
                format(self._context.span_id, "016x"),
                format(parent.span_id, "016x") if parent is not None else None,
                self._name,
                self._attrs,
                self._start_ns,
                end_ns,
                STATUS_NAMES[status.status_code],
                status.description,
                self._events or (),
            )
        )


class RecordingTracer(otel_trace.Tracer):
    """Starts ``RecordingSpan``s; parents come from the OpenTelemetry context as usual."""

    def __init__(self, writer: RowWriter[Row]) -> None:
        self._writer = writer
        self._random = random.Random()

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> otel_trace.Span:
        parent = otel_trace.get_current_span(context).get_span_context()
        bits = self._random.getrandbits
        span_id = bits(64) or 1
        if parent.is_valid:
            trace_id, parent_ctx = parent.trace_id, parent
        else:
            trace_id, parent_ctx = bits(128) or 1, None
        span_context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)
        return RecordingSpan(name, span_context, parent_ctx, attributes, start_time or time.time_ns(), self._writer)

    # The API declares its own context-manager type; a plain contextmanager behaves the same.
    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[otel_trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with otel_trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class RecordingTracerProvider(otel_trace.TracerProvider):
    """Hands out ``RecordingTracer``s that all write through one ``RowWriter``."""

    def __init__(self, writer: RowWriter[Row]) -> None:
        self.writer = writer
        self._tracer = RecordingTracer(writer)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> otel_trace.Tracer:
        return self._tracer

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.writer.flush()

    def shutdown(self) -> None:
        self.writer.shutdown()
