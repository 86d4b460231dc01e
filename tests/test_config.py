"""Settings from tether.toml and TETHER_* variables, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import SettingsError, load_settings
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
    with pytest.raises(ConfigError, match=r"unknown key 'ulr' in \[store\]; did you mean 'url'\?"):
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


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        # Before: "[gateway.redis_ur] Extra inputs are not permitted".
        (
            '[gateway]\nredis_ur = "redis://x"\n',
            "tether.toml: unknown key 'redis_ur' in [gateway]; did you mean 'redis_url'?",
        ),
        (
            '[providers.p]\nkind = "sim"\n[deployments.d]\nprovider = "p"\nmodel = "m"\nfaults = { eror_rate = 0.1 }\n',
            "tether.toml: unknown key 'eror_rate' in [deployments.d.faults]; did you mean 'error_rate'?",
        ),
        (
            '[guard.agents.oncall.tools]\nread_logs = { aproval = "always" }\n',
            "tether.toml: unknown key 'aproval' in [guard.agents.oncall.tools.read_logs]; did you mean 'approval'?",
        ),
        ("[store]\nzzz = 1\n", "tether.toml: unknown key 'zzz' in [store] (known: url)"),
        ("[console]\ntheme = 4\n", "tether.toml: unknown key 'theme' in [console]"),
    ],
)
def test_an_unknown_key_is_named_in_its_table_at_any_depth(toml: str, message: str) -> None:
    Path("tether.toml").write_text(toml)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert refused.value.problems[0] == message


def test_a_typo_of_a_required_key_reports_the_typo_not_field_required() -> None:
    # Before: "[routes.r.tiers] Field required" (and 1 more), which never named the key written.
    Path("tether.toml").write_text("[routes.r]\ntierz = [['d']]\n")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert refused.value.problems == ["tether.toml: unknown key 'tierz' in [routes.r]; did you mean 'tiers'?"]


def test_a_value_of_the_wrong_kind_names_the_key_and_table() -> None:
    Path("tether.toml").write_text('[providers.p]\nkind = "sim"\ntimeout_s = "soon"\n')
    with pytest.raises(SettingsError, match=r"'timeout_s' in \[providers.p\]: Input should be a valid number"):
        load_settings()


def test_every_problem_is_listed() -> None:
    Path("tether.toml").write_text("[store]\nulr = 'x'\n[gateway]\nredis_ur = 'y'\n")
    with pytest.raises(SettingsError, match=r"and 1 more: run `tether config check`") as refused:
        load_settings()
    assert len(refused.value.problems) == 2


README_GUARD = """
[guard.agents.oncall.tools]
read_logs = {}
restart_service = { when = ["service in ['checkout', 'search']", "env != 'prod'"], approval = "always" }
refund = { when = ["amount <= 100"] }
"""


def test_guard_tables_are_part_of_the_settings() -> None:
    # Before: Settings had no [guard], so any command reading tether.toml refused the README's guard tables.
    Path("tether.toml").write_text(README_GUARD)
    settings = load_settings()
    assert set(settings.guard.agents["oncall"].tools) == {"read_logs", "restart_service", "refund"}
    assert settings.guard.agents["oncall"].tools["restart_service"].approval == "always"


def test_reserved_tables_are_accepted_empty() -> None:
    Path("tether.toml").write_text("[workers]\n[console]\n")
    load_settings()


def test_importing_the_config_loads_no_database_driver_telemetry_sdk_or_http_client() -> None:
    import subprocess
    import sys

    heavy = ("sqlalchemy", "psycopg", "opentelemetry.sdk", "aiohttp", "httpx", "genai_prices")
    code = (
        "import sys, tether, tether.config\n"
        "tether.config.load_settings\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {heavy!r} or m.startswith('opentelemetry.sdk')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
