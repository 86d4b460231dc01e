"""Migrations: applied once, recorded, atomic, and safe when several processes open a new database."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tether.errors import StoreError
from tether.store import open_store
from tether.store.engine import create_store_engine
from tether.store.migrations import MIGRATIONS, Migration, applied_versions, migrate
from tether.store.schema import metadata
from tether.store.url import parse_store_url

EngineFactory = Callable[[], sa.Engine]


@pytest.fixture
def store_engine(store_url: str) -> Iterator[EngineFactory]:
    """Make engines on the test database configured as the store makes them; all disposed afterwards."""
    made: list[sa.Engine] = []

    def make() -> sa.Engine:
        engine = create_store_engine(parse_store_url(store_url))
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


def _recorded(engine: sa.Engine) -> list[tuple[int, str, object]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT version, name, applied_at FROM schema_migrations ORDER BY version"))
        return [(row.version, row.name, row.applied_at) for row in rows]


def test_opening_a_new_database_applies_and_records_every_migration(store_url: str, raw_engine: sa.Engine) -> None:
    open_store(store_url).close()

    recorded = _recorded(raw_engine)
    assert [(version, name) for version, name, _ in recorded] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(applied_at is not None for _, _, applied_at in recorded)


def test_reopening_applies_nothing(store_url: str, raw_engine: sa.Engine, store_engine: EngineFactory) -> None:
    open_store(store_url).close()
    before = _recorded(raw_engine)

    open_store(store_url).close()

    assert _recorded(raw_engine) == before
    assert migrate(store_engine()) == []


def test_migrated_database_matches_the_schema_module(store_url: str, raw_engine: sa.Engine) -> None:
    open_store(store_url).close()

    inspector = sa.inspect(raw_engine)
    for table in metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert list(columns) == [c.name for c in table.columns], table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
        assert inspector.get_pk_constraint(table.name)["constrained_columns"] == [c.name for c in table.primary_key]
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(table.name)}
        assert indexes == {ix.name: [c.name for c in ix.columns] for ix in table.indexes}, table.name


def test_a_failing_migration_leaves_no_trace(store_engine: EngineFactory) -> None:
    def broken(connection: sa.Connection) -> None:
        connection.execute(sa.text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("the next migration is broken")

    engine = store_engine()
    with pytest.raises(RuntimeError, match="the next migration is broken"):
        migrate(engine, [*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "broken", broken)])

    with engine.connect() as connection:
        assert applied_versions(connection) == {m.version for m in MIGRATIONS}
        assert not sa.inspect(connection).has_table("half_done")


def test_a_database_from_a_newer_tether_is_refused(store_url: str, raw_engine: sa.Engine) -> None:
    open_store(store_url).close()
    with raw_engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', :at)"),
            {"at": _recorded(raw_engine)[0][2]},
        )

    with pytest.raises(StoreError, match=r"schema version 99 .* upgrade tether"):
        open_store(store_url)


def test_migration_versions_must_be_consecutive(store_engine: EngineFactory) -> None:
    with pytest.raises(ValueError, match=r"1, 2, 3"):
        migrate(store_engine(), [Migration(2, "gap", lambda connection: None)])


def test_concurrent_migrators_apply_each_migration_once(store_engine: EngineFactory) -> None:
    calls: list[str] = []

    def slow_create(connection: sa.Connection) -> None:
        calls.append(threading.current_thread().name)
        connection.execute(sa.text("CREATE TABLE once_only (x INTEGER)"))
        time.sleep(0.2)  # a wide window for the other migrators to collide in

    migrations = [Migration(1, "slow create", slow_create)]
    engines = [store_engine() for _ in range(4)]
    start = threading.Barrier(len(engines))
    results: dict[int, list[int] | BaseException] = {}

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = migrate(engines[i], migrations)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"migrator-{i}") for i in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(calls) == 1, calls
    assert sorted(map(str, results.values())) == ["[1]", "[]", "[]", "[]"]


_OPEN_WHEN_TOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tether.store import open_store
    ready, go, url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    ready.touch()
    while not go.exists():
        time.sleep(0.001)
    open_store(url).close()
    """
)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_processes_opening_a_new_sqlite_database_together_all_succeed(
    store_url: str, tmp_path: Path, raw_engine: sa.Engine
) -> None:
    go = tmp_path / "go"
    readies = [tmp_path / f"ready-{i}" for i in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_WHEN_TOLD, str(ready), str(go), store_url],
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready in readies
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readies) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert [version for version, _, _ in _recorded(raw_engine)] == [m.version for m in MIGRATIONS]
