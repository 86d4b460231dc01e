"""``StoreSpanExporter``: OpenTelemetry spans into the trace store.

The exporter runs inside the application's span processor, so it must never
raise: when the database is down it returns ``FAILURE`` and logs one line
(the store's password-free URL and the reason), once per outage; the next
successful export logs that the store is back.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status, StatusCode

from tether import semconv
from tether.redaction import Scrubber, default_scrubber
from tether.store import SpanRecord, TraceStore
from tether.store.rows import build_row

__all__ = ["STATUS_NAMES", "ScrubbingSpanExporter", "StoreSpanExporter", "scrub_span", "span_to_record", "span_to_row"]

logger = logging.getLogger(__name__)

_STATUS = STATUS_NAMES = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    # OpenTelemetry keeps sequences as tuples; JSON (and SpanRecord) want lists.
    # Indexing by key is the fastest way through the SDK's read-only mapping proxy.
    if not attributes:
        return {}
    plain = {key: attributes[key] for key in attributes}
    for key, value in plain.items():
        if type(value) is tuple:
            plain[key] = list(value)  # replacing a value while iterating is safe, adding keys is not
    return plain


def span_to_record(span: ReadableSpan) -> SpanRecord:
    """Convert a finished OpenTelemetry span into a ``SpanRecord``.

    Raises:
        ValueError: the span has no span context (never the case for SDK spans).
    """
    context = span.get_span_context()
    if context is None:
        raise ValueError(f"span {span.name!r} has no span context")
    attributes = _plain(span.attributes)
    run_id = attributes.get(semconv.TETHER_RUN_ID)
    operation = attributes.get(semconv.GEN_AI_OPERATION_NAME)
    start_ns = span.start_time or 0
    status = span.status
    return SpanRecord(
        trace_id=format(context.trace_id, "032x"),
        span_id=format(context.span_id, "016x"),
        parent_span_id=format(span.parent.span_id, "016x") if span.parent is not None else None,
        run_id=run_id if isinstance(run_id, str) else None,
        name=span.name,
        operation=operation if isinstance(operation, str) else None,
        start_ns=start_ns,
        end_ns=span.end_time or start_ns,
        status=_STATUS[status.status_code],
        status_message=status.description or None,
        attributes=attributes,
        events=[
            {"name": event.name, "time_ns": event.timestamp, "attributes": _plain(event.attributes)}
            for event in span.events
        ],
    )


class StoreSpanExporter(SpanExporter):
    """Writes each batch of finished spans to a ``TraceStore`` in one insert.

    Args:
        store: where the spans go.
        owns_store: close the store when the exporter shuts down (the provider's
            ``shutdown``); leave False when the store is shared.
    """

    def __init__(self, store: TraceStore, *, owns_store: bool = False) -> None:
        self._store = store
        self._owns_store = owns_store
        self._failing = False
        self._shut_down = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Store the spans; ``FAILURE`` (never an exception) if they could not be stored."""
        if self._shut_down:
            return SpanExportResult.FAILURE
        try:
            self._store.write_rows([span_to_row(span) for span in spans])
        except Exception as exc:
            # Anything, not just StoreError: an exception here would surface in the app's code path.
            self._log_failure(len(spans), exc)
            return SpanExportResult.FAILURE
        if self._failing:
            with self._lock:
                self._failing = False
            logger.info("tether: trace store at %s is accepting spans again", self._store.url)
        return SpanExportResult.SUCCESS

    def _log_failure(self, count: int, exc: Exception) -> None:
        with self._lock:
            first = not self._failing
            self._failing = True
        # One warning per outage; repeats (one per batch) only at debug level.
        level = logging.WARNING if first else logging.DEBUG
        # Store errors are one safe line already; anything else is cut short, it may quote span data.
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        logger.log(level, "tether: %d spans not stored: %s", count, reason)

    def shutdown(self) -> None:
        """Refuse further exports; close the store if this exporter owns it."""
        self._shut_down = True
        if self._owns_store:
            self._store.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing to flush: every export is written before it returns."""
        return True


def _attributes_of(span: ReadableSpan) -> Mapping[str, Any]:
    """The span's attributes without copying them.

    ``ReadableSpan.attributes`` wraps them in a read-only proxy whose item-by-item
    copy is a fifth of the conversion's cost; the SDK's ``BoundedAttributes`` keeps
    a plain dict inside, read here directly when present (the SDK version is
    pinned in uv.lock; a test checks both paths agree).
    """
    raw = getattr(span, "_attributes", None)
    inner = getattr(raw, "_dict", None)
    if isinstance(inner, dict):
        return inner
    return dict(span.attributes) if span.attributes else {}


def span_to_row(span: ReadableSpan) -> tuple[object, ...]:
    """A finished SDK span as a ``spans`` row (``INSERT_COLUMNS`` order), for ``TraceStore.write_rows``.

    The same row as ``row_from_record(span_to_record(span))`` without the
    intermediate record: this runs on the application's thread for every span.
    """
    context = span.get_span_context()
    if context is None:
        raise ValueError(f"span {span.name!r} has no span context")
    parent = span.parent
    start_ns = span.start_time or 0
    return build_row(
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
        format(parent.span_id, "016x") if parent is not None else None,
        span.name,
        _attributes_of(span),
        start_ns,
        span.end_time or start_ns,
        _STATUS[span.status.status_code],
        span.status.description,
        [{"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})} for e in span.events],
    )


def scrub_span(span: ReadableSpan, scrubber: Scrubber) -> ReadableSpan:
    """``span`` with known secret values scrubbed from its name, attributes, events, links and status.

    SDK spans are immutable once ended, so a span holding a secret is copied;
    one without any is returned as it is.
    """
    if not scrubber.active:
        return span
    original = span.attributes or {}  # a new read-only view at each access: keep this one
    # One search over everything the span holds; the field-by-field copy only when it finds something.
    everything: list[Any] = [
        span.name,
        span.status.description,
        dict(original),
        [[event.name, dict(event.attributes or {})] for event in span.events],
        [dict(link.attributes or {}) for link in span.links],
    ]
    try:
        text = orjson.dumps(everything, default=str).decode()
    except orjson.JSONEncodeError:  # integers beyond 64 bits
        text = json.dumps(everything, default=str, ensure_ascii=False)
    if not scrubber.contains_secret(text):
        return span
    name = scrubber.scrub(span.name)
    attributes = scrubber.scrub_mapping(original)
    changed = name is not span.name or attributes is not original
    events: list[Event] = []
    for event in span.events:
        event_attrs = event.attributes or {}
        event_name, clean_attrs = scrubber.scrub(event.name), scrubber.scrub_mapping(event_attrs)
        if event_name is event.name and clean_attrs is event_attrs:
            events.append(event)
        else:
            changed = True
            events.append(Event(event_name, clean_attrs, event.timestamp))
    links: list[Link] = []
    for link in span.links:
        link_attrs = link.attributes or {}
        clean_link_attrs = scrubber.scrub_mapping(link_attrs)
        if clean_link_attrs is not link_attrs:
            changed = True
            link = Link(link.context, clean_link_attrs)
        links.append(link)
    status = span.status
    if status.description:
        description = scrubber.scrub(status.description)
        if description is not status.description:
            changed = True
            status = Status(status.status_code, description)
    if not changed:
        return span
    return ReadableSpan(
        name=name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingSpanExporter(SpanExporter):
    """Wraps an exporter (OTLP, in-memory…) so spans leave the process without known secret values.

    A wrapper rather than a span processor because the SDK hands every processor
    the same immutable span: scrubbed copies must go to this exporter only. It runs
    where the exporter runs (the batch processor's thread), off the request path.

    Args:
        exporter: where the scrubbed spans go.
        scrubber: which values to scrub (default: the process-wide scrubber).
    """

    def __init__(self, exporter: SpanExporter, scrubber: Scrubber | None = None) -> None:
        self.exporter = exporter
        self._scrubber = scrubber or default_scrubber()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._scrubber.active:
            spans = [scrub_span(span, self._scrubber) for span in spans]
        return self.exporter.export(spans)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)
