"""What every component that keeps its own table in the store shares: a connection, errors, write locking."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from tether.store.engine import SQLITE_BEGIN
from tether.store.failures import translate_errors
from tether.store.url import StoreURL, parse_store_url

if TYPE_CHECKING:
    from tether.store import TraceStore

__all__ = ["StoreAccess"]


class StoreAccess:
    """Connections to the store's database, with its errors translated into ``StoreError``.

    Args:
        store: the ``TraceStore`` whose database (and connection pool) to use,
            or an ``Engine`` on a migrated database. The caller keeps ownership.
    """

    def __init__(self, store: TraceStore | Engine) -> None:
        engine = store if isinstance(store, Engine) else store.engine
        self._engine = engine
        self._where: StoreURL = parse_store_url(engine.url.render_as_string(hide_password=False))
        # An in-memory SQLite database is one connection shared by all threads: take turns on it.
        self._sqlite_lock: contextlib.AbstractContextManager[object] = (
            threading.Lock() if self._where.backend == "sqlite" else contextlib.nullcontext()
        )

    @property
    def url(self) -> str:
        """The database's URL without its password."""
        return self._where.display

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @contextlib.contextmanager
    def _connect(self, action: str) -> Iterator[Connection]:
        with self._sqlite_lock, translate_errors(self._where, action), self._engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE), so a read
        followed by a write waits its turn instead of failing when another connection wrote meanwhile."""
        with self._connect(action) as connection:
            connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            with connection.begin():
                yield connection
