"""``tether.open()``: one wiring object for the store, tracing, gateway, guard, kills and agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tether
from tether.errors import UnknownRouteError, UserError
from tether.gateway.ledger import CostLedger
from tether.guard.audit import GuardStore
from tether.messages import StopReason
from tether.runtime import tool
from tether.store import open_store
from tether.testing import ScriptedModel, text_response, tool_response

GATEWAY_TOML = """\
[providers.sim]
kind = "sim"

[deployments.sonnet]
provider = "sim"
model = "claude-sonnet-4-5"

[routes.oncall]
tiers = [["sonnet"]]
"""


@tool
def query_logs(service: str) -> str:
    """Search a service's recent logs.

    Args:
        service: service name.
    """
    return f"{service}: no errors"


def test_opening_builds_nothing_until_a_part_is_used() -> None:
    tt = tether.open()
    try:
        assert not Path(".tether").exists()
        assert "nothing yet" in repr(tt)
        tt.store  # noqa: B018  # the first use opens it
        assert Path(".tether/tether.db").exists()
        assert tt.store is tt.store
    finally:
        tt.close()


def test_an_agent_run_is_stored_with_its_guard_decisions_audited() -> None:
    with tether.open() as tt:
        model = ScriptedModel([tool_response(("query_logs", {"service": "checkout"})), text_response("fine")])
        agent = tt.agent("oncall", model, tools=[query_logs], instructions="You are on call.")
        result = agent.run_sync("is checkout ok?")
        assert result.stop_reason is StopReason.COMPLETED
        assert agent.kill_switch is tt.kills
        assert agent.durable is tt.durable
        assert agent.guard.recorder is tt.guard_recorder

    with open_store() as store:
        (run,) = store.list_runs()
        assert run.run_id == result.run_id
        assert run.stop_reason == "completed"
        (entry,) = GuardStore(store).audit(run_id=result.run_id)
        assert entry.tool == "query_logs"


@pytest.mark.usefixtures("gateway_toml")
def test_a_route_model_goes_through_the_gateway_and_lands_in_the_cost_ledger() -> None:
    with tether.open() as tt:
        result = tt.agent("oncall", "route:oncall").run_sync("hello")
        assert result.stop_reason is StopReason.COMPLETED
        with pytest.raises(UnknownRouteError, match="route 'nope' is not defined"):
            tt.model("route:nope")

    with open_store() as store:
        assert CostLedger(store).has_rows()
        (run,) = store.list_runs()
        assert run.run_id == result.run_id


def test_a_model_reference_without_route_resolves_as_a_provider_model() -> None:
    with tether.open() as tt:
        assert tt.model("sim:claude-sonnet-4-5").model_name == "claude-sonnet-4-5"
        assert "gateway" not in repr(tt)  # no routes needed for a plain model


def test_the_guard_policy_comes_from_the_config_file_guard_table() -> None:
    Path("guarded.toml").write_text('[guard.agents.oncall.tools]\nquery_logs = { approval = "always" }\n')
    with tether.open("guarded.toml") as tt:
        agent_policy = tt.policy.for_agent("oncall")
        assert agent_policy is not None
        assert "query_logs" in agent_policy.tools


def test_close_is_idempotent_and_a_closed_tether_says_so() -> None:
    tt = tether.open()
    tt.store  # noqa: B018
    tt.close()
    tt.close()
    with pytest.raises(UserError, match=r"closed: call tether.open\(\) again"):
        tt.store  # noqa: B018


@pytest.fixture
def gateway_toml() -> Path:
    path = Path("tether.toml")
    path.write_text(GATEWAY_TOML)
    return path


@pytest.mark.usefixtures("gateway_toml")
async def test_async_with_closes_the_gateway_on_the_running_loop() -> None:
    async with tether.open() as tt:
        result = await tt.agent("oncall", "route:oncall").run("hello")
    assert result.stop_reason is StopReason.COMPLETED
    assert "closed" in repr(tt)
    with open_store() as store:
        assert CostLedger(store).has_rows()


def _tether_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TETHER_DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "tether", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_script_whose_run_fails_and_never_closes_still_stores_the_run_with_its_error(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import tether

            tt = tether.open()
            agent = tt.agent("oncall", "anthropic:claude-sonnet-4-5")
            agent.run_sync("checkout error rate is 12%")   # no ANTHROPIC_API_KEY: raises
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TETHER_DATABASE_URL")}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "ANTHROPIC_API_KEY is not set" in done.stderr  # the exception reached the caller

    runs = _tether_cli("runs", "--json", cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    (run,) = json.loads(runs.stdout)
    assert run["agent"] == "oncall"
    assert run["stop_reason"] == "error"

    shown = _tether_cli("runs", "show", run["run_id"], "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    root = next(s for s in json.loads(shown.stdout)["spans"] if s["parent_span_id"] is None)
    assert root["attributes"]["error.type"] == "ConfigError"
    assert "ANTHROPIC_API_KEY is not set" in root["attributes"]["tether.error.message"]
    assert root["status"] == "error"
