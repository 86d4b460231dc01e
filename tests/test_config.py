"""Settings from tether.toml and TETHER_* variables, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import load_settings
from tether.errors import ConfigError


def test_defaults_without_any_config() -> None:
    settings = load_settings()
    assert settings.store.url == "sqlite:///.tether/tether.db"
    assert settings.trace.payload_chars == 4096


def test_file_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("tether.toml").write_text('[store]\nurl = "sqlite:///from-file.db"\n[trace]\npayload_chars = 100\n')
    assert load_settings().store.url == "sqlite:///from-file.db"
    monkeypatch.setenv("TETHER_DATABASE_URL", "sqlite:///from-env.db")
    settings = load_settings()
    assert settings.store.url == "sqlite:///from-env.db"
    assert settings.trace.payload_chars == 100


def test_unknown_key_names_the_key() -> None:
    Path("tether.toml").write_text("[store]\nulr = 'x'\n")
    with pytest.raises(ConfigError, match=r"\[store.ulr\]"):
        load_settings()


def test_wrong_type_from_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_TRACE_PAYLOAD_CHARS", "lots")
    with pytest.raises(ConfigError, match="TETHER_TRACE_PAYLOAD_CHARS"):
        load_settings()


def test_invalid_toml_is_reported_with_the_file() -> None:
    Path("tether.toml").write_text("[store\n")
    with pytest.raises(ConfigError, match=r"tether.toml: not valid TOML"):
        load_settings()


def test_explicit_missing_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_CONFIG", "nowhere.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_the_redis_url_comes_from_the_environment_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("tether.toml").write_text('[gateway]\nredis_url = "redis://file:6379/0"\n')
    assert load_settings().gateway.redis_url == "redis://file:6379/0"
    monkeypatch.setenv("TETHER_REDIS_URL", "redis://127.0.0.1:6379/3")
    assert load_settings().gateway.redis_url == "redis://127.0.0.1:6379/3"
