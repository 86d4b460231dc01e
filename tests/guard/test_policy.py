"""Least-privilege policies: constraints parse safely, hold exactly, and bad policies are refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import load_settings
from tether.errors import ConfigError
from tether.guard.policy import AgentPolicy, Policy, PolicyError, ToolRule, parse_constraint


@pytest.mark.parametrize(
    ("text", "arguments", "ok"),
    [
        ("amount <= 100", {"amount": 100}, True),
        ("amount <= 100", {"amount": 100.5}, False),
        ("amount <= 100", {"amount": "50"}, False),  # a string is not a number: refused, never coerced
        ("amount <= 100", {"amount": True}, False),
        ("amount <= 100", {"amount": float("nan")}, False),
        ("amount < 100", {"amount": 100}, False),
        ("retries >= 1", {"retries": 1}, True),
        ("env != 'prod'", {"env": "staging"}, True),
        ("env != 'prod'", {"env": "prod"}, False),
        ("env == 'prod'", {"env": "prod"}, True),
        ("count == 1", {"count": True}, False),  # True is not 1
        ("count == 1", {"count": 1.0}, True),
        ("service in ['checkout', 'search']", {"service": "search"}, True),
        ("service in ['checkout', 'search']", {"service": "payments"}, False),
        ("service not in ['payments']", {"service": "search"}, True),
        ("service not in ['payments']", {"service": "payments"}, False),
        ("path under '/srv/app'", {"path": "/srv/app/logs/x.log"}, True),
        ("path under '/srv/app'", {"path": "/srv/app"}, True),
        ("path under '/srv/app'", {"path": "/srv/app/../../etc/passwd"}, False),
        ("path under '/srv/app'", {"path": "/srv/application/x"}, False),
        ("path under '/srv/app'", {"path": "srv/app/x"}, False),  # relative paths are not under anything
        ("path under '/srv/app'", {"path": "/srv/app/x\x00.log"}, False),
        ("name matches '^ci-[a-z]+$'", {"name": "ci-bot"}, True),
        ("name matches 'ci-[a-z]+'", {"name": "evil-ci-bot"}, False),  # the whole value must match
        ("target.host == 'db-1'", {"target": {"host": "db-1"}}, True),
        ("target.host == 'db-1'", {"target": {"port": 5432}}, False),
        ("amount <= 100", {}, False),  # missing: refused
    ],
)
def test_constraints_hold_exactly(text: str, arguments: dict[str, object], ok: bool) -> None:
    assert (parse_constraint(text).check(arguments) is None) is ok


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("amount", "is not '<argument> <operator> <value>'"),
        ("amount <= 'ten'", "needs a number"),
        ("service in 'checkout'", "non-empty list"),
        ("service in []", "non-empty list"),
        ("path under 'relative'", "absolute path prefix"),
        ("name matches '('", "does not compile"),
        ("env == prod", "not a literal"),
        ("env == __import__('os').system('x')", "not a literal"),  # nothing is evaluated
        ("env == ['a']", "use 'in' for a list"),
    ],
)
def test_bad_constraints_are_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_constraint(text)


@pytest.mark.parametrize(
    "when",
    [
        ("amount <= 10", "amount >= 20"),
        ("amount < 10", "amount >= 10"),
        ("env == 'prod'", "env == 'staging'"),
        ("service in ['a', 'b']", "service in ['c']"),
        ("service in ['a']", "service != 'a'"),
        ("level in [1, 2]", "level > 5"),
    ],
)
def test_contradictory_constraints_are_refused(when: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="contradict"):
        ToolRule(when=when)


def test_compatible_constraints_are_kept() -> None:
    rule = ToolRule(when=("amount >= 1", "amount <= 100", "currency in ['EUR', 'USD']"))
    assert rule.violation({"amount": 50, "currency": "EUR"}) is None
    assert "currency" in (rule.violation({"amount": 50, "currency": "GBP"}) or "")


def test_a_tool_both_granted_and_denied_is_refused() -> None:
    with pytest.raises(ValueError, match="both granted and denied"):
        AgentPolicy(tools={"restart": ToolRule()}, deny=("restart",))


TOML = """\
[guard]
quarantine_after = 2

[guard.agents.oncall.tools]
read_logs = {}
restart_service = { when = ["service in ['checkout', 'search']"], approval = "always" }
refund = { when = "amount <= 100", secrets = ["stripe"] }
"""


def test_a_policy_loads_from_tether_toml(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(TOML)
    policy = Policy.load(path)

    oncall = policy.for_agent("oncall")
    assert oncall is not None and set(oncall.tools) == {"read_logs", "restart_service", "refund"}
    assert oncall.tools["restart_service"].approval == "always"
    assert oncall.tools["refund"].secrets == ("stripe",)
    assert policy.quarantine_after == 2
    assert policy.line_of("oncall", "refund") == f"{path}:7"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (TOML.replace("amount <= 100", "amount <= lots"), 7, "not a literal"),
        (TOML.replace("read_logs = {}", "read_logs = { when = ['a <= 1', 'a >= 2'] }"), 5, "contradict"),
    ],
)
def test_a_bad_policy_is_refused_with_its_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message) as refused:
        Policy.load(path)
    assert f"{path}:{line}" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            TOML.replace('approval = "always"', 'approval = "sometimes"'),
            r"'approval' in \[guard.agents.oncall.tools.restart_service\]: Input should be 'default'",
        ),
        (
            TOML + "\n[guard.agents.triage]\ntools = {}\nallow = ['x']\n",
            r"unknown key 'allow' in \[guard.agents.triage\]",
        ),
    ],
)
def test_a_policy_table_of_the_wrong_shape_is_refused_as_settings(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Policy.load(path)


def test_a_policy_is_built_from_the_settings_without_reading_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(TOML)
    settings = load_settings(path)
    path.unlink()  # from_settings must not need it
    policy = Policy.from_settings(settings.guard, source=settings.source, text=settings.source_text)
    assert policy.quarantine_after == 2
    assert policy.line_of("oncall", "refund") == f"{path}:7"


def test_a_policy_naming_a_tool_the_agent_lacks_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(TOML)
    policy = Policy.load(path)
    with pytest.raises(PolicyError, match=r"tether.toml:7: .* names tool 'refund', which the agent does not have"):
        policy.check_tools("oncall", ["read_logs", "restart_service"])
    policy.check_tools("oncall", ["read_logs", "restart_service", "refund", "extra"])  # more tools: fine
