"""Opening a store for reading creates and migrates nothing; run ids resolve from a prefix, as git's do."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tether import semconv as sc
from tether.store import AmbiguousRunId, NoStore, RunNotFound, TraceStore, open_store

from .conftest import Run, RunFactory


def test_read_only_open_of_no_database_raises_no_store_and_creates_nothing(store_url: str, backend: str) -> None:
    with pytest.raises(NoStore) as raised:
        open_store(store_url, create=False)

    assert "no store at" in str(raised.value) and "tether demo" in str(raised.value)
    engine = sa.create_engine(store_url)
    try:
        if backend == "sqlite":
            assert not Path(str(engine.url.database)).parent.exists()  # not even the directory
        else:
            with engine.connect() as connection:
                assert sa.inspect(connection).get_table_names() == []
    finally:
        engine.dispose()


def test_read_only_open_reads_an_existing_store(store: TraceStore, record_run: RunFactory, store_url: str) -> None:
    run = record_run()

    with open_store(store_url, create=False) as reader:
        assert [r.run_id for r in reader.list_runs()] == [run.run_id]


def test_resolve_run_id_by_prefix(store: TraceStore, record_run: RunFactory) -> None:
    record_run("3f9a0c2e41d7b6a5")
    record_run("3f9a77aa00000000")
    record_run("3f9a0c2e41d7b6a5ff")  # longer id that the first one prefixes

    assert store.resolve_run_id("3f9a7") == "3f9a77aa00000000"
    assert store.resolve_run_id("3f9a0c2e41d7b6a5") == "3f9a0c2e41d7b6a5"  # an exact id wins
    with pytest.raises(AmbiguousRunId) as ambiguous:
        store.resolve_run_id("3f9a")
    assert ambiguous.value.candidates == ["3f9a0c2e41d7b6a5", "3f9a0c2e41d7b6a5ff", "3f9a77aa00000000"]
    with pytest.raises(RunNotFound):
        store.resolve_run_id("ffff")
    with pytest.raises(RunNotFound):
        store.resolve_run_id("3f9a%")  # LIKE wildcards mean nothing


def test_resolve_run_id_in_flight_finds_a_run_by_its_stored_spans(store: TraceStore) -> None:
    going = Run("c0ffee0000000001")
    store.write_spans([s for s in going.spans if s.operation != sc.OP_INVOKE_AGENT])

    with pytest.raises(RunNotFound):
        store.resolve_run_id("c0ffee")  # not a run until its invoke_agent span is stored
    assert store.resolve_run_id("c0ffee", in_flight=True) == "c0ffee0000000001"
