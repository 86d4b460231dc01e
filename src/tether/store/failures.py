"""Turning database driver errors into one-line ``StoreError``/``StoreUnavailable`` messages.

Messages name the store by its password-free URL and say what to do. They are
built from the driver's own first line, never from SQLAlchemy's full text,
which quotes the statement's parameters (span payloads have no place in a log).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from tether.errors import StoreError, StoreUnavailable
from tether.store.url import StoreURL

__all__ = ["store_error", "translate_errors"]

_CHECK_URL = "check TETHER_DATABASE_URL"

# (text in the driver message, hint); the first match wins.
_PG_HINTS: tuple[tuple[str, str], ...] = (
    ("connection refused", f"is the server running? {_CHECK_URL}"),
    ("timeout expired", f"is the server running and reachable? {_CHECK_URL}"),
    ("could not translate host name", f"unknown host: {_CHECK_URL}"),
    ("server closed the connection", f"the server went away: is it running? {_CHECK_URL}"),
    ("password authentication failed", f"check the user and password in {_CHECK_URL}"),
    ("no pg_hba.conf entry", f"the server refuses this user from this host: {_CHECK_URL}"),
    ("role ", f"check the user name: {_CHECK_URL}"),
    ("database ", f"create the database (createdb) or {_CHECK_URL}"),
)

# SQLite failures that mean "the database cannot be used", as opposed to a bad query.
_SQLITE_UNAVAILABLE: tuple[tuple[str, str], ...] = (
    ("unable to open database file", f"check the path and its permissions, or {_CHECK_URL}"),
    ("database is locked", "another process held the database busy for too long: retry"),
    ("file is not a database", f"this file is not a tether database: {_CHECK_URL}"),
    ("readonly database", f"the file or its directory is read-only: check permissions, or {_CHECK_URL}"),
    ("disk i/o error", "the disk failed or the file vanished: check the disk"),
    ("database or disk is full", "free some disk space"),
)


def _one_line(text: str, password: str | None) -> str:
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else "unknown error"
    if password:
        line = line.replace(password, "***")
    return line


def _pg_detail(text: str) -> str:
    # psycopg says 'connection failed: connection to server at "h", port p failed: FATAL:  <why>'.
    fatal = re.search(r"FATAL:\s*(.+)", text)
    detail = fatal.group(1) if fatal else text.rsplit("failed: ", 1)[-1]
    return detail[:1].lower() + detail[1:]


def store_error(exc: SQLAlchemyError, where: StoreURL, action: str) -> StoreError:
    """The ``StoreError`` to raise for a database error met while doing ``action``.

    Args:
        exc: what SQLAlchemy raised.
        where: the store's URL.
        action: what the store was doing, e.g. ``"writing spans"``.
    """
    if not isinstance(exc, DBAPIError):
        return StoreError(f"trace store at {where.display}: {action} failed: {type(exc).__name__}")
    raw = str(exc.orig) if exc.orig is not None else type(exc).__name__
    lowered = raw.lower()
    if where.backend == "postgresql":
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            detail = _one_line(_pg_detail(raw), where.password)
            hint = next((h for needle, h in _PG_HINTS if needle in lowered), _CHECK_URL)
            return StoreUnavailable(f"cannot reach PostgreSQL at {where.display}: {detail} — {hint}")
    else:
        for needle, hint in _SQLITE_UNAVAILABLE:
            if needle in lowered:
                detail = _one_line(raw, where.password)
                return StoreUnavailable(f"cannot use SQLite database at {where.display}: {detail} — {hint}")
    return StoreError(f"trace store at {where.display}: {action} failed: {_one_line(raw, where.password)}")


@contextmanager
def translate_errors(where: StoreURL, action: str) -> Iterator[None]:
    """Re-raise any SQLAlchemy error in the block as a ``StoreError`` (see ``store_error``)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise store_error(exc, where, action) from exc
