"""Opening a store: where it is, how it is configured, and what a bad URL or a dead server says."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tether.errors import ConfigError, StoreError, StoreUnavailable
from tether.store import open_store
from tether.store.engine import BUSY_TIMEOUT_MS

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
postgresql_only = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def test_without_a_url_the_store_is_in_dot_tether_of_the_working_directory() -> None:
    with open_store() as store:
        assert store.url == "sqlite:///.tether/tether.db"
        assert store.list_runs() == []

    assert Path(".tether/tether.db").is_file()


def test_tether_database_url_names_the_store(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_DATABASE_URL", store_url)

    with open_store() as store:
        assert store.url == store_url

    assert not Path(".tether").exists()


@sqlite_only
def test_sqlite_connections_use_wal_normal_sync_and_a_busy_timeout(store_url: str) -> None:
    with open_store(store_url) as store, store._engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert pragma("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS


def test_sqlite_path_that_is_a_directory_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()

    with pytest.raises(StoreUnavailable, match=r"cannot use SQLite database at sqlite:///.*dir\.db: unable to open"):
        open_store(f"sqlite:///{tmp_path / 'dir.db'}")


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("just some notes, not a database\n" * 100)

    with pytest.raises(StoreUnavailable, match="not a tether database"):
        open_store(f"sqlite:///{tmp_path / 'notes.db'}")


def test_an_unreachable_postgresql_says_where_and_what_to_do_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        open_store("postgresql+psycopg://postgres:hunter2@127.0.0.1:5999/test")

    message = str(caught.value)
    assert message == (
        "cannot reach PostgreSQL at postgresql+psycopg://postgres@127.0.0.1:5999/test: connection refused"
        " — is the server running? check TETHER_DATABASE_URL"
    )
    assert "hunter2" not in message


@pytest.mark.postgres
def test_a_missing_postgresql_database_says_to_create_it(postgres_url: str) -> None:
    missing = sa.make_url(postgres_url).set(database="tether_no_such_db").render_as_string(hide_password=False)

    with pytest.raises(StoreUnavailable, match=r'database "tether_no_such_db" does not exist — create the database'):
        open_store(missing)


@postgresql_only
def test_plain_postgresql_urls_use_psycopg(store_url: str) -> None:
    plain = store_url.replace("postgresql+psycopg://", "postgresql://", 1)

    with open_store(plain) as store:
        assert store.url.startswith("postgresql+psycopg://")
        assert store.list_runs() == []


@pytest.mark.parametrize(
    "url",
    ["mysql://root:secret@localhost/tether", "postgresql+asyncpg://u:secret@localhost/db", "sqlite+aiosqlite:///x.db"],
)
def test_an_unsupported_database_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"unsupported database URL .* use sqlite:///") as caught:
        open_store(url)

    assert "secret" not in str(caught.value)


def test_text_that_is_not_a_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="is not a database URL"):
        open_store("tether.db")


def test_a_closed_store_refuses_work(store_url: str) -> None:
    store = open_store(store_url)
    store.close()

    with pytest.raises(StoreError, match="is closed"):
        store.list_runs()
