"""SQLAlchemy engines for store URLs, with each backend's connection settings.

SQLite: every new connection gets WAL mode (readers never block the writer, so
the CLI can read while an agent writes), ``synchronous=NORMAL`` (durable at
each checkpoint, not each commit: a power cut can lose the last few
transactions, never corrupt the file; fine for traces), a busy timeout so a
second process waits for the write lock instead of failing at once, and 16 KiB
pages for new databases (span rows average 1-2 KiB with tool payloads up to
4 KiB and more: with SQLite's default 4 KiB pages most of them spill into
overflow pages; measured +15% ingest).
SQLAlchemy, not the ``sqlite3`` module, emits ``BEGIN``: the module's legacy
mode would run DDL outside transactions, and migrations need ``BEGIN
IMMEDIATE`` (take the write lock before reading what is applied).

PostgreSQL: psycopg 3, a short connect timeout so a dead server fails fast,
and pre-ping so connections broken by a server restart are replaced.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from tether.errors import StoreUnavailable
from tether.store.url import StoreURL

__all__ = ["BUSY_TIMEOUT_MS", "SQLITE_BEGIN", "create_store_engine"]

BUSY_TIMEOUT_MS: Final = 5_000
CONNECT_TIMEOUT_S: Final = 5
PAGE_SIZE: Final = 16_384

# Execution option read by the SQLite "begin" hook: "IMMEDIATE" takes the write
# lock at BEGIN; the default, "DEFERRED", takes it at the first write.
SQLITE_BEGIN: Final = "tether_sqlite_begin"
_BEGIN_STATEMENTS: Final[dict[str, str]] = {"DEFERRED": "BEGIN DEFERRED", "IMMEDIATE": "BEGIN IMMEDIATE"}

SQLiteBegin = Literal["DEFERRED", "IMMEDIATE"]


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    # journal_mode is stored in the file, so only the first connection ever switches it.
    # The switch needs an exclusive lock and, when another connection is switching
    # too, SQLite reports "locked" at once instead of calling the busy handler: retry.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    # No implicit BEGIN from the sqlite3 module: the "begin" hook below emits it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: everything after it may meet another process's lock.
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        # Only takes effect on a new, empty file, and only before WAL is turned on.
        cursor.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
    connection.exec_driver_sql(_BEGIN_STATEMENTS[mode])


def _sqlite_engine(where: StoreURL) -> Engine:
    path = where.sqlite_path
    if path is None:
        # One shared connection, or each pooled connection would see its own empty
        # in-memory database. Good for tests and one-off tools, not for threads.
        engine = create_engine(where.url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        parent = Path(path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create directory {parent} for the SQLite database at {where.display}: "
                f"{exc.strerror} — check the path and its permissions, or TETHER_DATABASE_URL"
            ) from None
        engine = create_engine(where.url)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _postgresql_engine(where: StoreURL) -> Engine:
    connect_args: dict[str, Any] = {}
    # Settings given in the URL's query string win over these defaults.
    if "connect_timeout" not in where.url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name" not in where.url.query:
        connect_args["application_name"] = "tether"
    return create_engine(where.url, pool_pre_ping=True, connect_args=connect_args)


def create_store_engine(where: StoreURL) -> Engine:
    """An engine for the store at ``where``; it connects lazily.

    Raises:
        StoreUnavailable: the SQLite database's directory cannot be created.
    """
    if where.backend == "sqlite":
        return _sqlite_engine(where)
    return _postgresql_engine(where)
