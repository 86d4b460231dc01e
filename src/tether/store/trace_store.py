"""``TraceStore``: where every run's spans are kept, and ``open_store`` to get one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Final, Self

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tether.errors import StoreError
from tether.store import queries
from tether.store.engine import SQLITE_BEGIN, create_store_engine
from tether.store.errors import AmbiguousRunId, RunNotFound
from tether.store.failures import store_error, translate_errors
from tether.store.migrations import migrate
from tether.store.records import RunSummary, RunTrace, SpanRecord, datetime_to_ns, summarize
from tether.store.rows import row_from_record
from tether.store.url import StoreURL, parse_store_url

__all__ = ["TraceStore", "open_store"]

# How many candidate ids an ambiguous prefix reports.
_CANDIDATES: Final = 10


class TraceStore:
    """Append-only span storage with run queries, on SQLite or PostgreSQL.

    Safe to share between threads (the exporter writes from its own thread
    while the CLI reads). Get one with ``open_store``; ``close`` it when done,
    or use it as a context manager.
    """

    def __init__(self, engine: Engine, where: StoreURL) -> None:
        """Wrap an engine whose database is already migrated; prefer ``open_store``."""
        self._engine = engine
        self._where = where
        self._closed = False

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for other tables in the same database (e.g. the budget ledger)."""
        return self._engine

    @property
    def url(self) -> str:
        """The store's URL without its password."""
        return self._where.display

    def __repr__(self) -> str:
        return f"TraceStore({self.url!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"trace store at {self.url} is closed")

    def write_spans(self, records: Sequence[SpanRecord]) -> None:
        """Insert spans in one batch; spans already stored are left unchanged.

        Raises:
            StoreUnavailable: the database cannot be reached.
            StoreError: the database refused the write.
        """
        self.write_rows([row_from_record(r) for r in records])

    def write_rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        """Insert prepared rows (from ``span_row``) in one batch; existing spans are left unchanged.

        The fast path of the span processor, which turns each span into a row as
        it ends so that no span objects are kept waiting for the next batch.

        Raises:
            StoreUnavailable: the database cannot be reached.
            StoreError: the database refused the write.
        """
        self._check_open()
        if not rows:
            return
        with translate_errors(self._where, "writing spans"), self._engine.connect() as connection:
            # IMMEDIATE: take SQLite's write lock up front, waiting up to the busy timeout.
            connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            with connection.begin():
                queries.insert_spans(connection, rows)

    def list_runs(
        self,
        *,
        limit: int = 50,
        agent: str | None = None,
        stop_reason: str | None = None,
        since: datetime | None = None,
    ) -> list[RunSummary]:
        """Runs, newest first.

        Args:
            limit: at most this many.
            agent: only runs of this agent (``gen_ai.agent.name``).
            stop_reason: only runs that stopped for this reason.
            since: only runs started at or after this moment (naive means UTC).
        """
        self._check_open()
        if limit <= 0:
            return []
        since_ns = datetime_to_ns(since) if since is not None else None
        with translate_errors(self._where, "listing runs"), self._engine.connect() as connection:
            roots = queries.select_roots(
                connection, limit=limit, agent=agent, stop_reason=stop_reason, since_ns=since_ns
            )
        return [summarize(root) for root in roots]

    def get_run(self, run_id_or_prefix: str) -> RunTrace:
        """A run's summary and spans, by its id or a unique prefix of it.

        Raises:
            RunNotFound: no run id starts with it.
            AmbiguousRunId: several run ids start with it.
        """
        self._check_open()
        prefix = run_id_or_prefix.strip()
        if not prefix:
            raise RunNotFound(run_id_or_prefix)
        with translate_errors(self._where, "reading a run"), self._engine.connect() as connection:
            matches = queries.match_run_ids(connection, prefix, limit=_CANDIDATES + 1)
            if prefix in matches:
                run_id = prefix  # an exact id wins even when it prefixes a longer one
            elif len(matches) == 1:
                run_id = matches[0]
            elif not matches:
                raise RunNotFound(prefix)
            else:
                raise AmbiguousRunId(prefix, matches[:_CANDIDATES], more=len(matches) > _CANDIDATES)
            run_spans = queries.select_run_spans(connection, run_id)
        root = queries.pick_root(run_spans)
        if root is None:  # only if the spans vanished between the two queries
            raise RunNotFound(prefix)
        return RunTrace(summary=summarize(root), spans=run_spans)

    def close(self) -> None:
        """Close every pooled connection; the store cannot be used afterwards."""
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_store(url: str | None = None) -> TraceStore:
    """Open the store at ``url``, creating and migrating the database as needed.

    Args:
        url: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host:port/db``;
            None means the configured one (``TETHER_DATABASE_URL``, ``tether.toml``,
            else ``sqlite:///.tether/tether.db`` in the working directory).

    Raises:
        ConfigError: the URL is malformed or names an unsupported database.
        StoreUnavailable: the database cannot be reached, opened or created.
        StoreError: the database was migrated by a newer tether.
    """
    if url is None:
        # Imported here: tether.config reaches the gateway's budget ledger, which uses this module.
        from tether.config import load_settings

        url = load_settings().store.url
    where = parse_store_url(url)
    engine = create_store_engine(where)
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise store_error(exc, where, "migrating the schema") from exc
    except BaseException:
        engine.dispose()
        raise
    return TraceStore(engine, where)
