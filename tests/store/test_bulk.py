"""Multi-row SQLite inserts: statements built right, chunked under SQLite's parameter limit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tether.store.bulk import _statement, insert_rows


def test_a_one_row_insert_becomes_n_rows_keeping_its_conflict_clause() -> None:
    single = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING"
    assert _statement(single, 3) == "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?) ON CONFLICT DO NOTHING"
    with pytest.raises(ValueError, match="one-row INSERT"):
        _statement("INSERT INTO t (a) VALUES (:a)", 2)


def test_rows_are_inserted_in_chunks_and_bad_rows_are_refused() -> None:
    engine = sa.create_engine("sqlite://")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
            single = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING"
            insert_rows(connection, single, 2, [(i, f"row {i}") for i in range(1201)])
            insert_rows(connection, single, 2, [(5, "again")])  # a conflict: skipped
            with pytest.raises(ValueError, match="2 values"):
                insert_rows(connection, single, 2, [(9999,)])
            count, b5 = connection.exec_driver_sql("SELECT count(*), (SELECT b FROM t WHERE a = 5) FROM t").one()
        assert (count, b5) == (1201, "row 5")
    finally:
        engine.dispose()


def test_statements_come_in_few_shapes_whatever_the_batch_sizes() -> None:
    engine = sa.create_engine("sqlite://")
    seen: set[int] = set()

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("INSERT"):
            seen.add(statement.count("(?, ?)"))

    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
            single = "INSERT INTO t (a, b) VALUES (?, ?)"
            first = 0
            for n in range(1, 700, 7):
                insert_rows(connection, single, 2, [(first + i, "x") for i in range(n)])
                first += n
            assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == first
    finally:
        engine.dispose()
    assert seen <= {1, 2, 4, 8, 16, 32, 64, 128, 256}
