"""The store's SQL, on a ``Connection``: insert spans, find runs, read a run's spans.

Every statement is built with SQLAlchemy Core, so values are always bound
parameters. How a run is found:

* a run's root is an ``invoke_agent`` span with a run id and no parent among
  the spans of the same run (a sub-agent's ``invoke_agent`` has one);
* ``list_runs`` scans ``(operation, start_ns)`` backwards, newest first;
* a run id prefix is a range scan on the ``run_id`` index, which is correct
  because run ids compare in byte order (see ``schema.RUN_ID_TYPE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, Dialect, Insert, and_, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from tether import semconv
from tether.store.bulk import insert_rows
from tether.store.records import SpanRecord
from tether.store.rows import INSERT_COLUMNS, record_from_row
from tether.store.schema import spans

__all__ = [
    "insert_spans",
    "match_run_ids",
    "pick_root",
    "select_roots",
    "select_run_spans",
]

# Greater than every character, so [prefix, prefix + _TOP) holds exactly the ids starting with prefix.
_TOP: Final = "\U0010ffff"


@dataclass(frozen=True)
class _CompiledInsert:
    sql: str
    positional: bool


def _insert_or_ignore(dialect_name: str) -> Insert:
    # Append-only: an existing (trace_id, span_id) is left as it is, so a re-sent span changes nothing.
    if dialect_name == "postgresql":
        return postgresql.insert(spans).on_conflict_do_nothing()
    return sqlite.insert(spans).on_conflict_do_nothing()


_compiled: dict[tuple[str, str], _CompiledInsert] = {}


def _compiled_insert(dialect: Dialect) -> _CompiledInsert:
    key = (dialect.name, dialect.paramstyle)
    if key not in _compiled:
        compiled = _insert_or_ignore(dialect.name).compile(dialect=dialect)
        names = tuple(compiled.positiontup or compiled.binds)
        if names != INSERT_COLUMNS:
            raise AssertionError(f"spans insert binds {names}, rows carry {INSERT_COLUMNS}")
        _compiled[key] = _CompiledInsert(sql=compiled.string, positional=compiled.positiontup is not None)
    return _compiled[key]


def insert_spans(connection: Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert rows (in ``INSERT_COLUMNS`` order); existing spans are skipped.

    On SQLite, a few multi-row statements (``tether.store.bulk``); elsewhere one executemany.

    The Core statement is compiled once per dialect and run with
    ``exec_driver_sql``: per-row parameter processing in ``execute`` costs
    more than SQLite's own insert, and these columns need no type conversion.
    """
    if not rows:
        return
    insert = _compiled_insert(connection.dialect)
    if connection.dialect.name == "sqlite":  # multi-row statements: see tether.store.bulk
        insert_rows(connection, insert.sql, len(INSERT_COLUMNS), rows)
    elif insert.positional:
        connection.exec_driver_sql(insert.sql, list(rows))
    else:  # psycopg's "%(name)s" placeholders take dicts
        connection.exec_driver_sql(insert.sql, [dict(zip(INSERT_COLUMNS, row, strict=True)) for row in rows])


def _is_root() -> ColumnElement[bool]:
    parent = spans.alias("parent")
    parent_in_run = (
        select(parent.c.span_id)
        .where(
            parent.c.trace_id == spans.c.trace_id,
            parent.c.span_id == spans.c.parent_span_id,
            parent.c.run_id == spans.c.run_id,
        )
        .correlate(spans)
    )
    return and_(
        spans.c.operation == semconv.OP_INVOKE_AGENT,
        spans.c.run_id.is_not(None),
        ~exists(parent_in_run),
    )


def select_roots(
    connection: Connection,
    *,
    limit: int,
    agent: str | None = None,
    stop_reason: str | None = None,
    since_ns: int | None = None,
) -> list[SpanRecord]:
    """Root spans of runs, newest first, at most ``limit``; one per run (the earliest if several)."""
    query = select(spans).where(_is_root())
    if agent is not None:
        query = query.where(spans.c.agent_name == agent)
    if stop_reason is not None:
        query = query.where(spans.c.stop_reason == stop_reason)
    if since_ns is not None:
        query = query.where(spans.c.start_ns >= since_ns)
    query = query.order_by(spans.c.start_ns.desc(), spans.c.span_id.desc()).limit(limit)
    roots: dict[str, SpanRecord] = {}
    for row in connection.execute(query).mappings():
        record = record_from_row(row)
        # Rows come newest first, so a later row of the same run is its earlier root.
        roots.pop(record.run_id or "", None)
        roots[record.run_id or ""] = record
    return sorted(roots.values(), key=lambda r: (r.start_ns, r.span_id), reverse=True)


def match_run_ids(connection: Connection, prefix: str, *, limit: int, in_flight: bool = False) -> list[str]:
    """Ids of runs whose id starts with ``prefix`` (at most ``limit``), sorted.

    A run is known by its ``invoke_agent`` span, which is stored when the run
    ends; ``in_flight=True`` also finds runs still going, by any span of theirs
    already stored (a model call or tool call that ended).
    """
    query = select(spans.c.run_id).where(spans.c.run_id >= prefix, spans.c.run_id < prefix + _TOP)
    if not in_flight:
        query = query.where(spans.c.operation == semconv.OP_INVOKE_AGENT)
    query = query.distinct().order_by(spans.c.run_id).limit(limit)
    return [run_id for run_id in connection.scalars(query) if run_id is not None]


def select_run_spans(connection: Connection, run_id: str) -> list[SpanRecord]:
    """Every span of a run, ordered by start time, then span id."""
    query = select(spans).where(spans.c.run_id == run_id).order_by(spans.c.start_ns, spans.c.span_id)
    return [record_from_row(row) for row in connection.execute(query).mappings()]


def pick_root(run_spans: Sequence[SpanRecord]) -> SpanRecord | None:
    """A run's root among its spans (ordered by start): the first parentless ``invoke_agent``.

    Falls back to the first ``invoke_agent`` when every one has a parent in the
    run, which happens while the run's own root has not been written yet.
    """
    span_ids = {s.span_id for s in run_spans}
    agents = [s for s in run_spans if s.operation == semconv.OP_INVOKE_AGENT]
    for span in agents:
        if span.parent_span_id is None or span.parent_span_id not in span_ids:
            return span
    return agents[0] if agents else None
