"""Fixtures of the fault suite: fresh databases a child process can open, a private Redis, a mock provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import postgres_schema
from tests.faults._support import RedisServer, Upstream


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema (``search_path`` in the URL, so child processes use it too), dropped after."""
    with postgres_schema(postgres_url, "tether_fault") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file (WAL; several processes may share it)."""
    return f"sqlite:///{tmp_path / 'store' / 'tether.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test on both stores: a fresh SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, non-persistent redis-server the test may kill or restart."""
    with RedisServer(tmp_path / "redis") as server:
        yield server
