"""``TraceStore``: where every run's spans are kept, and ``open_store`` to get one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from tether.errors import StoreError
from tether.store import queries
from tether.store.engine import SQLITE_BEGIN, create_store_engine
from tether.store.errors import AmbiguousRunId, NoStore, RunNotFound
from tether.store.failures import store_error, translate_errors
from tether.store.migrations import MIGRATIONS, applied_versions, migrate
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

    def resolve_run_id(self, run_id_or_prefix: str, *, in_flight: bool = False) -> str:
        """The full id of the run whose id is ``run_id_or_prefix`` or starts with it, like git's short ids.

        An exact id wins even when it prefixes a longer one. The look-up is a
        range scan on the ``run_id`` index, with the prefix as a bound parameter.
        ``in_flight=True`` also finds runs that have not ended yet, by any span
        of theirs already stored (see ``queries.match_run_ids``).

        Raises:
            RunNotFound: no run id starts with it.
            AmbiguousRunId: several run ids start with it (the error lists some).
        """
        self._check_open()
        with translate_errors(self._where, "looking up a run id"), self._engine.connect() as connection:
            return self._resolve(connection, run_id_or_prefix, in_flight=in_flight)

    @staticmethod
    def _resolve(connection: Connection, run_id_or_prefix: str, *, in_flight: bool = False) -> str:
        prefix = run_id_or_prefix.strip()
        if not prefix:
            raise RunNotFound(run_id_or_prefix)
        matches = queries.match_run_ids(connection, prefix, limit=_CANDIDATES + 1, in_flight=in_flight)
        if prefix in matches:
            return prefix
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise RunNotFound(prefix)
        raise AmbiguousRunId(prefix, matches[:_CANDIDATES], more=len(matches) > _CANDIDATES)

    def get_run(self, run_id_or_prefix: str) -> RunTrace:
        """A run's summary and spans, by its id or a unique prefix of it (see ``resolve_run_id``).

        Raises:
            RunNotFound: no run id starts with it.
            AmbiguousRunId: several run ids start with it.
        """
        self._check_open()
        with translate_errors(self._where, "reading a run"), self._engine.connect() as connection:
            run_id = self._resolve(connection, run_id_or_prefix)
            run_spans = queries.select_run_spans(connection, run_id)
        root = queries.pick_root(run_spans)
        if root is None:  # only if the spans vanished between the two queries
            raise RunNotFound(run_id_or_prefix.strip())
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


def open_store(url: str | None = None, *, create: bool = True) -> TraceStore:
    """Open the store at ``url``, creating and migrating the database as needed.

    Args:
        url: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host:port/db``;
            None means the configured one (``TETHER_DATABASE_URL``, ``tether.toml``,
            else ``sqlite:///.tether/tether.db`` in the working directory).
        create: False opens an existing store for reading: nothing is created
            (no directory, no SQLite file, no table) and no migration runs.

    Raises:
        ConfigError: the URL is malformed or names an unsupported database.
        NoStore: ``create=False`` and there is no tether database at the URL.
        StoreUnavailable: the database cannot be reached, opened or created.
        StoreError: the database was migrated by a newer tether or, with
            ``create=False``, by an older one (open it once for writing to upgrade it).
    """
    if url is None:
        # Imported here: tether.config reaches the gateway's budget ledger, which uses this module.
        from tether.config import load_settings

        url = load_settings().store.url
    where = parse_store_url(url)
    if not create and where.backend == "sqlite":
        path = where.sqlite_path
        if path is None or not Path(path).is_file():
            raise NoStore(_shown(where))
    engine = create_store_engine(where)
    try:
        if create:
            migrate(engine)
        else:
            _check_schema(engine, where)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise store_error(exc, where, "migrating the schema" if create else "reading the schema version") from exc
    except BaseException:
        engine.dispose()
        raise
    return TraceStore(engine, where)


def _check_schema(engine: Engine, where: StoreURL) -> None:
    """Refuse a database without tether's schema, or at another version than this tether's; change nothing."""
    with engine.connect() as connection:
        done = applied_versions(connection)
    if not done:
        raise NoStore(_shown(where))
    known = len(MIGRATIONS)
    if max(done) > known:
        raise StoreError(
            f"the database at {where.display} is at schema version {max(done)} but this tether knows only up to "
            f"{known}: upgrade tether, or point TETHER_DATABASE_URL at another database"
        )
    if len(done) < known:
        raise StoreError(
            f"the database at {where.display} is at schema version {max(done)}, older than this tether's {known}: "
            "a read does not upgrade it — run any writing command once (e.g. `tether demo`) or open_store()"
        )


def _shown(where: StoreURL) -> str:
    """The URL for a message, with a relative SQLite path also shown absolute (which directory was looked in)."""
    path = where.sqlite_path
    if path is not None and not Path(path).is_absolute():
        return f"{where.display} ({Path(path).absolute()})"
    return where.display
