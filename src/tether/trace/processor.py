"""Finished spans into the store, in batches, off the request path.

``RowWriter`` keeps rows (flat tuples of strings and numbers) and writes them
from a background thread with one ``executemany`` per batch; SQLite releases
the GIL while it inserts. Two producers feed it: ``StoreSpanProcessor`` for
OpenTelemetry SDK spans, and tether's own recorder (``tether.trace.recorder``).

Why not OpenTelemetry's ``BatchSpanProcessor`` with ``StoreSpanExporter``:
that keeps every finished ``ReadableSpan`` (dozens of objects each) in a queue
until the next batch, and on this machine the cyclic garbage collector's work
on those waiting objects cost more than everything else tracing did (measured
~55 µs per span of the ~120 µs it added). Rows of atomic values are not
tracked by the collector, and each span is let go as soon as it ends.

Failure handling matches the exporter's: the database being down never raises
into the application; one warning per outage, and at most ``max_buffer`` rows
are kept waiting (older rows beyond that are dropped and counted).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Final, Generic, Protocol, TypeVar

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from tether.trace.exporter import span_to_row

__all__ = ["RowSink", "RowWriter", "StoreSpanProcessor"]

logger = logging.getLogger(__name__)

Row = tuple[object, ...]
DEFAULT_INTERVAL_S: Final = 0.5
DEFAULT_BATCH: Final = 2_048
DEFAULT_MAX_BUFFER: Final = 262_144


RowT = TypeVar("RowT")
RowT_contra = TypeVar("RowT_contra", contravariant=True)


class RowSink(Protocol[RowT_contra]):
    """Where a ``RowWriter`` puts its batches: ``TraceStore`` (spans) or the cost ledger."""

    @property
    def url(self) -> str: ...

    def write_rows(self, rows: Sequence[RowT_contra], /) -> None: ...


class RowWriter(Generic[RowT]):
    """Writes rows to a sink (a ``TraceStore``, the cost ledger) from a background thread.

    Adding a row never raises and never waits for the database: rows are kept in
    memory (at most ``max_buffer``; the oldest are dropped past that, and counted)
    and written in batches every ``interval_s``, or sooner when a batch is full.
    While the sink fails, one warning is logged per outage and the rows stay queued.

    Args:
        sink: where the rows go.
        what: what the rows are, for log lines ("spans", "cost records").
        interval_s: longest time a row waits before it is written.
        batch_size: rows per insert; a full batch wakes the writer early.
        max_buffer: most rows kept waiting while the sink is unreachable.

    Attributes:
        written: rows stored so far.
        dropped: rows lost because the buffer was full, or added after shutdown.
    """

    def __init__(
        self,
        sink: RowSink[RowT],
        *,
        what: str = "spans",
        interval_s: float = DEFAULT_INTERVAL_S,
        batch_size: int = DEFAULT_BATCH,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        if not interval_s > 0 or batch_size < 1 or max_buffer < 1:
            raise ValueError("interval_s must be > 0, and batch_size and max_buffer ≥ 1")
        self.sink = sink
        self._what = what
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        self._rows: list[RowT] = []
        # Guards _rows: producers append while the writer thread swaps the list out and requeues.
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._failing = False
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name=f"tether-{what.replace(' ', '-')}-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Rows queued and not written yet."""
        return len(self._rows)

    def add(self, row: RowT) -> None:
        """Queue one row; returns at once."""
        with self._lock:
            if self._stopped:
                self.dropped += 1
                return
            rows = self._rows
            rows.append(row)
            if len(rows) > self._max_buffer:
                del rows[0]
                self.dropped += 1
            full = len(rows) >= self._batch_size
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> bool:
        """Write everything queued now; False if the sink could not take it (it stays queued)."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return True
            for start in range(0, len(rows), self._batch_size):
                batch = rows[start : start + self._batch_size]
                try:
                    self.sink.write_rows(batch)
                except Exception as exc:  # never raise into the application
                    self._requeue(rows[start:], exc)
                    return False
                self.written += len(batch)
            if self._failing:
                self._failing = False
                logger.info("tether: %s at %s are being stored again", self._what, self.sink.url)
            return True

    def _requeue(self, unwritten: list[RowT], exc: Exception) -> None:
        if not self._failing:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            logger.warning("tether: %d %s not stored yet: %s", len(unwritten), self._what, reason)
        self._failing = True
        with self._lock:
            combined = unwritten + self._rows
            overflow = len(combined) - self._max_buffer
            if overflow > 0:
                self.dropped += overflow
                combined = combined[overflow:]
            self._rows = combined

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the writer after a last flush; rows added afterwards are dropped."""
        if self._stopped:
            return
        with self._lock:
            self._stopped = True
        self._wake.set()
        self._thread.join(timeout=timeout_s)
        if not self.flush():
            logger.warning("tether: %d %s could not be stored before shutdown", self.pending, self._what)


class StoreSpanProcessor(SpanProcessor):
    """An OpenTelemetry SDK span processor that turns spans into rows as they end."""

    def __init__(self, writer: RowWriter[Row]) -> None:
        self.writer = writer

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        try:
            row = span_to_row(span)
        except Exception:  # a span we cannot convert must not break the application
            logger.debug("tether: span %r could not be converted for the store", span.name, exc_info=True)
            return
        self.writer.add(row)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.writer.flush()

    def shutdown(self) -> None:
        self.writer.shutdown()
