"""``tether incidents``: list incidents and quarantined agents, release an agent (once)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from tether.cli import app
from tether.guard.audit import GuardStore, NotQuarantined, StoreGuardRecorder
from tether.guard.guard import RunGuard
from tether.guard.policy import Policy
from tether.guard.types import Finding
from tether.store import open_store

runner = CliRunner()
WHY = "3 incidents in the last hour: hallucinated_tool, policy_violation, prompt_injection"


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A store where agent oncall is quarantined after three incidents, and agent triage has one."""
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    with open_store(url) as store, StoreGuardRecorder(store, Policy(quarantine_after=3)) as recorder:
        for kind in ("hallucinated_tool", "policy_violation", "prompt_injection"):
            recorder.finding(RunGuard("run-7", "oncall"), "scale", Finding("loop", kind, "high", f"{kind}!"), None)
        recorder.finding(RunGuard("run-8", "triage"), None, Finding("rules", "role_marker", "low", "marker"), None)
    return url


def test_list_shows_open_incidents_newest_first_and_the_quarantined_agents(url: str) -> None:
    listed = runner.invoke(app, ["incidents", "list", "--database", url, "--json"])
    assert listed.exit_code == 0, listed.output
    data = orjson.loads(listed.stdout)
    assert [i["kind"] for i in data["incidents"]] == [
        "role_marker",
        "prompt_injection",
        "policy_violation",
        "hallucinated_tool",
    ]
    assert [(q["agent"], q["reason"], q["active"]) for q in data["quarantines"]] == [("oncall", WHY, True)]

    table = runner.invoke(app, ["incidents", "list", "--database", url])
    assert table.exit_code == 0
    assert "4 open incident(s)" in table.stdout and "1 quarantined agent(s)" in table.stdout
    assert "tether incidents release AGENT" in table.stdout

    triage = orjson.loads(
        runner.invoke(app, ["incidents", "list", "--agent", "triage", "--json", "--database", url]).stdout
    )
    assert [i["agent"] for i in triage["incidents"]] == ["triage"] and triage["quarantines"] == []
    quiet = runner.invoke(app, ["incidents", "list", "--agent", "triage", "--database", url])
    assert "no agent is quarantined for agent triage" in quiet.stdout


def test_release_lets_the_agent_act_again_and_only_once(url: str) -> None:
    released = runner.invoke(
        app, ["incidents", "release", "oncall", "--reason", "prompt fixed", "--by", "alice", "--database", url]
    )
    assert released.exit_code == 0, released.output
    line = " ".join(released.stdout.split())
    assert "released agent oncall" in line and WHY in line
    assert "write and irreversible tools are allowed again" in line
    assert "3 open incident(s) marked released" in line and "by alice: prompt fixed" in line

    after = orjson.loads(runner.invoke(app, ["incidents", "list", "--json", "--database", url]).stdout)
    assert [i["agent"] for i in after["incidents"]] == ["triage"] and after["quarantines"] == []
    history = orjson.loads(runner.invoke(app, ["incidents", "list", "--all", "--json", "--database", url]).stdout)
    assert len(history["incidents"]) == 4
    assert [(q["agent"], q["released_by"]) for q in history["quarantines"]] == [("oncall", "alice")]
    assert "released" in runner.invoke(app, ["incidents", "list", "--all", "--database", url]).stdout

    again = runner.invoke(app, ["incidents", "release", "oncall", "--database", url])
    assert again.exit_code != 0 and isinstance(again.exception, NotQuarantined)
    assert "is not quarantined: it was released by alice" in str(again.exception)
    never = runner.invoke(app, ["incidents", "release", "triage", "--database", url])
    assert "'triage' is not quarantined, so there is nothing to release" in str(never.exception)


def test_release_as_json(url: str) -> None:
    result = runner.invoke(app, ["incidents", "release", "oncall", "--json", "--database", url])
    data = orjson.loads(result.stdout)
    assert (data["agent"], data["active"], data["incidents_released"]) == ("oncall", False, 3)
    assert data["released_by"]  # user@host by default
    with open_store(url) as store:
        assert GuardStore(store).quarantines() == []
