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
from typing import Final

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from tether.store import TraceStore
from tether.trace.exporter import span_to_row

__all__ = ["RowWriter", "StoreSpanProcessor"]

logger = logging.getLogger(__name__)

Row = tuple[object, ...]
DEFAULT_INTERVAL_S: Final = 0.5
DEFAULT_BATCH: Final = 2_048
DEFAULT_MAX_BUFFER: Final = 262_144


class RowWriter:
    """Writes span rows to a ``TraceStore`` from a background thread.

    Args:
        store: where the rows go.
        interval_s: longest time a row waits before it is written.
        batch_size: rows per insert; a full batch wakes the writer early.
        max_buffer: most rows kept waiting while the store is unreachable.
    """

    def __init__(
        self,
        store: TraceStore,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        batch_size: int = DEFAULT_BATCH,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        self.store = store
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        self._rows: list[Row] = []
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._stopped = False
        self._failing = False
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="tether-span-writer", daemon=True)
        self._thread.start()

    def add(self, row: Row) -> None:
        """Queue one row (``list.append`` is atomic under the GIL, so no lock here)."""
        if self._stopped:
            return
        rows = self._rows
        rows.append(row)
        if len(rows) >= self._batch_size:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> bool:
        """Write everything queued now; False if the store could not take it."""
        with self._write_lock:
            # Swap the list: producers append to the new one while this thread writes the old.
            rows, self._rows = self._rows, []
            if not rows:
                return True
            for start in range(0, len(rows), self._batch_size):
                batch = rows[start : start + self._batch_size]
                try:
                    self.store.write_rows(batch)
                except Exception as exc:  # never raise into the application
                    self._requeue(rows[start:], exc)
                    return False
                self.written += len(batch)
            if self._failing:
                self._failing = False
                logger.info("tether: trace store at %s is accepting spans again", self.store.url)
            return True

    def _requeue(self, unwritten: list[Row], exc: Exception) -> None:
        if not self._failing:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            logger.warning("tether: %d spans not stored yet: %s", len(unwritten), reason)
        self._failing = True
        combined = unwritten + self._rows
        if len(combined) > self._max_buffer:
            self.dropped += len(combined) - self._max_buffer
            combined = combined[-self._max_buffer :]
        self._rows = combined

    def shutdown(self) -> None:
        """Stop the writer after a last flush."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)
        if not self.flush():
            logger.warning("tether: %d spans could not be stored before shutdown", len(self._rows))


class StoreSpanProcessor(SpanProcessor):
    """An OpenTelemetry SDK span processor that turns spans into rows as they end."""

    def __init__(self, writer: RowWriter) -> None:
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
