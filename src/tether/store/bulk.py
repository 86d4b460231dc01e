"""Multi-row INSERTs for SQLite: one statement per few hundred rows instead of one step per row.

Python's sqlite3 ``executemany`` steps the statement once per row and lets go
of the GIL around every step. A background writer then needs the GIL back once
per row, and while the application's thread is busy (a gateway under load) each
of those waits can last a switch interval (5 ms): measured at ~1,600 requests/s,
the cost writer fell thousands of rows behind. One ``INSERT … VALUES (…), (…), …``
per chunk is one step, so the writer contends for the GIL a few times per batch.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

from sqlalchemy import Connection

__all__ = ["insert_rows"]

# SQLite's limit on bound parameters: 32,766 since 3.32, 999 before.
_MAX_VARIABLES: Final = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
# Rows per statement: a power of two, and a remainder goes in power-of-two pieces, so each table has at most
# nine statement shapes. (sqlite3 caches a prepared statement per distinct SQL text and connection: one shape
# per remainder size would hold hundreds of large prepared statements, measured as memory growing under load.)
_MAX_ROWS: Final = 256
_VALUES = re.compile(r"VALUES \((\?(?:, \?)*)\)")


@lru_cache(maxsize=32)
def _statement(single: str, rows: int) -> str:
    """``single`` (one ``VALUES (?, …)`` group) with ``rows`` groups."""
    match = _VALUES.search(single)
    if match is None:
        raise ValueError(f"not a one-row INSERT with ? placeholders: {single[:120]!r}")
    group = f"({match.group(1)})"
    return f"{single[: match.start()]}VALUES {', '.join([group] * rows)}{single[match.end() :]}"


def insert_rows(connection: Connection, single: str, columns: int, rows: Sequence[Sequence[object]]) -> None:
    """Insert ``rows`` (each ``columns`` values, in the statement's order) with as few statements as fit.

    Args:
        connection: a SQLite connection inside a transaction.
        single: the compiled one-row INSERT with ``?`` placeholders (its ON CONFLICT clause is kept).
        columns: values per row.
        rows: the rows.
    """
    size = _MAX_ROWS
    while size > 1 and size * columns > _MAX_VARIABLES:
        size //= 2
    start = 0
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        chunk = rows[start : start + size]
        params = tuple(value for row in chunk for value in row)
        if len(params) != columns * len(chunk):
            raise ValueError(f"every row needs {columns} values")
        connection.exec_driver_sql(_statement(single, len(chunk)), params)
        start += size
