"""The trace store: every agent run's spans, on SQLite (default) or PostgreSQL.

::

    from tether.store import open_store

    with open_store() as store:          # TETHER_DATABASE_URL, else .tether/tether.db
        for run in store.list_runs(limit=10):
            print(run.run_id, run.agent, run.stop_reason, run.cost_usd)
        trace = store.get_run("3f9a")    # a unique prefix of a run id is enough

Spans are written by ``tether.trace.exporter.StoreSpanExporter``; the schema is
created and upgraded by ``tether.store.migrations`` when a store is opened;
``open_store(url, create=False)`` opens an existing one for reading without creating or
migrating anything (``NoStore`` when there is none).
"""

from __future__ import annotations

from tether.store.errors import AmbiguousRunId, NoStore, RunNotFound
from tether.store.records import RunSummary, RunTrace, SpanRecord
from tether.store.trace_store import TraceStore, open_store

__all__ = [
    "AmbiguousRunId",
    "NoStore",
    "RunNotFound",
    "RunSummary",
    "RunTrace",
    "SpanRecord",
    "TraceStore",
    "open_store",
]
