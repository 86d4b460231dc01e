"""Store URLs: which ones tether accepts, and how to show one without its password."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tether.errors import ConfigError

__all__ = ["Backend", "StoreURL", "parse_store_url"]

Backend = Literal["sqlite", "postgresql"]

_FORMS = "sqlite:///path/to/tether.db or postgresql+psycopg://user@host:5432/db"
# For text that does not even parse as a URL: drop whatever sits between "user:" and "@".
_USERINFO_PASSWORD = re.compile(r"(//[^/:@]*):[^/@]*@")


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL.

    Attributes:
        url: the URL to connect with (password included).
        backend: the database kind.
        display: the URL with any password removed, safe for messages and logs.
        password: the password, so it can be scrubbed from driver messages.
    """

    url: URL
    backend: Backend
    display: str
    password: str | None

    @property
    def sqlite_path(self) -> str | None:
        """The database file of a SQLite URL; None for in-memory databases and PostgreSQL."""
        if self.backend != "sqlite":
            return None
        database = self.url.database
        if not database or database == ":memory:" or self.url.query.get("mode") == "memory":
            return None
        return database


def _display(url: URL) -> str:
    # URL.set() takes None as "unchanged", so build a password-less copy.
    bare = URL.create(
        drivername=url.drivername,
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query={k: v for k, v in url.query.items() if k.lower() != "password"},
    )
    return bare.render_as_string(hide_password=False)


def parse_store_url(raw: str) -> StoreURL:
    """Check a store URL and normalise its driver.

    ``postgresql://`` and ``postgres://`` are taken to mean
    ``postgresql+psycopg://``: psycopg 3 is the driver tether ships with.

    Raises:
        ConfigError: the text is not a URL, or names a database or driver tether does not support.
    """
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        shown = _USERINFO_PASSWORD.sub(r"\1@", raw)
        raise ConfigError(f"{shown!r} is not a database URL: use {_FORMS} (TETHER_DATABASE_URL)") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        kind: Backend = "sqlite"
    elif backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        kind = "postgresql"
        url = url.set(drivername="postgresql+psycopg")
    else:
        raise ConfigError(f"unsupported database URL {_display(url)}: use {_FORMS} (TETHER_DATABASE_URL)")
    if kind == "sqlite" and (url.host or url.username or url.port):
        raise ConfigError(
            f"invalid SQLite URL {_display(url)}: a SQLite URL has no host, "
            "use sqlite:///relative/path.db or sqlite:////absolute/path.db (TETHER_DATABASE_URL)"
        )
    password = url.password or None
    return StoreURL(url=url, backend=kind, display=_display(url), password=password)
