"""``tether config check``: every problem listed, the resolved configuration shown without secrets."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from tether.cli import app

runner = CliRunner()

GOOD = """
[store]
url = "postgresql+psycopg://tether:hunter2-secret@db:5432/tether"

[providers.anthropic]
kind = "anthropic"
api_key_env = "H1_TEST_ANTHROPIC_KEY"

[providers.vllm]
kind = "openai"
base_url = "http://10.0.0.5:8000/v1"

[deployments.sonnet]
provider = "anthropic"
model = "claude-sonnet-4-5"

[deployments.local]
provider = "vllm"
model = "llama3"

[routes.support]
tiers = [["sonnet"], ["local"]]
"""

README_GUARD = """
[guard.agents.oncall.tools]
read_logs = {}
restart_service = { when = ["service in ['checkout', 'search']", "env != 'prod'"], approval = "always" }
refund = { when = ["amount <= 100"] }
"""


def test_a_valid_file_is_summarised_with_key_variables_named_and_passwords_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("H1_TEST_ANTHROPIC_KEY", "sk-ant-never-shown-0123456789")
    Path("tether.toml").write_text(GOOD)
    result = runner.invoke(app, ["config", "check"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "H1_TEST_ANTHROPIC_KEY" in out and "https://api.anthropic.com" in out
    assert "sonnet → local" in out
    assert "tether:***@db:5432" in out
    assert "hunter2-secret" not in result.output and "never-shown" not in result.output
    assert max(len(line) for line in out.splitlines()) <= 100


def test_json_output_for_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H1_TEST_ANTHROPIC_KEY", "sk-ant-never-shown-0123456789")
    Path("tether.toml").write_text(GOOD)
    result = runner.invoke(app, ["config", "check", "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert data["valid"] is True
    assert data["providers"]["anthropic"] == {
        "kind": "anthropic",
        "wire": "anthropic",
        "base_url": "https://api.anthropic.com",
        "key_env": "H1_TEST_ANTHROPIC_KEY",
        "key_set": True,
    }
    # An OpenAI-compatible server at its own URL needs no key.
    assert data["providers"]["vllm"]["key_env"] is None
    assert data["routes"]["support"]["tiers"] == [["sonnet"], ["local"]]
    assert data["store"]["url"] == "postgresql+psycopg://tether:***@db:5432/tether"


def test_a_key_variable_not_set_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("H1_TEST_ANTHROPIC_KEY", raising=False)
    Path("tether.toml").write_text(GOOD)
    result = runner.invoke(app, ["config", "check", "--json"])
    assert result.exit_code == 1
    (error,) = orjson.loads(result.stdout)["errors"]
    assert error.startswith("[providers.anthropic] its API key variable H1_TEST_ANTHROPIC_KEY is not set")


def test_every_problem_is_listed_one_line_each() -> None:
    Path("bad.toml").write_text(
        '[gateway]\nredis_ur = "redis://x"\n[providers.p]\nkind = "antropic"\n[routes.r]\ntierz = [["a"]]\n'
    )
    result = runner.invoke(app, ["config", "check", "--config", "bad.toml"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert sorted(lines) == [
        "error: [providers.p] unknown provider kind 'antropic' (known: anthropic, openai, sim); "
        "did you mean 'anthropic'?",
        "error: bad.toml: unknown key 'redis_ur' in [gateway]; did you mean 'redis_url'?",
        "error: bad.toml: unknown key 'tierz' in [routes.r]; did you mean 'tiers'?",
    ]


def test_an_unknown_provider_kind_in_a_valid_file_fails_with_did_you_mean() -> None:
    Path("tether.toml").write_text('[providers.p]\nkind = "opena"\n[deployments.d]\nprovider = "p"\nmodel = "m"\n')
    result = runner.invoke(app, ["config", "check", "--json"])
    assert result.exit_code == 1
    data = orjson.loads(result.stdout)
    assert any("unknown provider kind 'opena'" in e and "did you mean 'openai'" in e for e in data["errors"])


def test_no_routes_is_a_warning_not_an_error() -> None:
    Path("tether.toml").write_text('[providers.s]\nkind = "sim"\n')
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert "warning: no [routes]: the model API will answer nothing" in result.stderr


def test_the_readme_guard_tables_break_no_command() -> None:
    # Before: the guard tables were not part of Settings, so every command that read tether.toml refused them.
    Path("tether.toml").write_text(README_GUARD)
    assert runner.invoke(app, ["config", "check"]).exit_code == 0
    runs = runner.invoke(app, ["runs", "--json"])
    assert runs.exit_code == 0, runs.output
    cost = runner.invoke(app, ["cost", "--json"])
    assert cost.exit_code == 0, cost.output
