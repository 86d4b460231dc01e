"""``tether serve`` refuses to start when it could not answer one call, with one line naming what to set.

Before, ``tether gateway serve`` with a provider whose API-key variable was not set (e.g. an ``anthropic``
provider and no ``ANTHROPIC_API_KEY``) started, answered ``/healthz`` "ok", and then answered every request
with a 500. Now start-up exits 2 naming the variable. Sim providers need no key.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.faults._support import GatewayProcess, run_tether, tether_env, write_toml

UNSET = "TETHER_H2_TEST_KEY_THAT_IS_NEVER_SET"


def anthropic_config(key_env: str | None) -> dict[str, Any]:
    provider: dict[str, Any] = {"kind": "anthropic", "base_url": "http://127.0.0.1:9"}
    if key_env is not None:
        provider["api_key_env"] = key_env
    return {
        "providers": {"claude": provider},
        "deployments": {"sonnet": {"provider": "claude", "model": "claude-sonnet-4-5"}},
        "routes": {"smart": {"tiers": [["sonnet"]]}},
    }


def exit_code(process: GatewayProcess) -> int:
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"the server started instead of refusing:\n{process.log[-2000:]}") from None


def test_a_provider_whose_key_variable_is_unset_stops_start_up_with_exit_2_naming_it(tmp_path: Path) -> None:
    process = GatewayProcess(tmp_path / "gw", anthropic_config(UNSET), database_url=f"sqlite:///{tmp_path}/t.db")
    process.start(wait=False)
    assert exit_code(process) == 2
    log = process.log
    assert UNSET in log and "provider claude" in log
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if line.startswith("error:")]) == 1


def test_the_default_anthropic_key_variable_empty_is_refused_too(tmp_path: Path) -> None:
    process = GatewayProcess(
        tmp_path / "gw",
        anthropic_config(None),
        database_url=f"sqlite:///{tmp_path}/t.db",
        env={"ANTHROPIC_API_KEY": ""},
    )
    process.start(wait=False)
    assert exit_code(process) == 2
    assert "ANTHROPIC_API_KEY" in process.log


def test_no_routes_is_refused_with_exit_2(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "tether.toml", {"server": {"port": 0}})
    result = run_tether(["serve", "--config", str(config)], env=tether_env(f"sqlite:///{tmp_path}/t.db"), cwd=tmp_path)
    assert result.returncode == 2
    assert "no routes are defined" in result.stderr


def test_a_sim_provider_needs_no_key_and_serves(tmp_path: Path) -> None:
    config = {
        "providers": {"sim": {"kind": "sim"}},
        "deployments": {"haiku": {"provider": "sim", "model": "claude-haiku-4-5"}},
        "routes": {"quick": {"tiers": [["haiku"]]}},
    }
    with GatewayProcess(
        tmp_path / "gw", config, database_url=f"sqlite:///{tmp_path}/t.db", args=["--no-auth"]
    ) as process:
        reply = httpx.post(
            f"{process.url}/v1/chat/completions",
            json={"model": "quick", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
