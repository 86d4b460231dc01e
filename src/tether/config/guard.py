"""``[guard]``: which agent may call which tool, with which arguments, and when a person must approve.

The schema only; ``tether.guard.policy.Policy.from_settings`` parses the ``when`` constraints
and checks that they are consistent. In tether.toml::

    [guard]
    quarantine_after = 3

    [guard.agents.oncall.tools]
    read_logs = {}
    restart_service = { when = ["service in ['checkout', 'search']", "env != 'prod'"], approval = "always" }
    refund = { when = "amount <= 100", secrets = ["stripe"] }

    [guard.agents.oncall]
    deny = ["drop_table"]
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tether.config.base import Strict

__all__ = ["GuardAgentSettings", "GuardSettings", "GuardToolSettings"]


class GuardToolSettings(Strict):
    """One granted tool: ``{ when = [...], approval = "...", secrets = [...] }``.

    Attributes:
        when: constraints every call's arguments must meet (one string or a list).
        approval: ``default`` (by risk and taint), ``always`` or ``never``.
        secrets: credential names this (agent, tool) may receive.
    """

    when: tuple[str, ...] = ()
    approval: Literal["default", "always", "never"] = "default"
    secrets: tuple[str, ...] = ()

    @field_validator("when", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value


class GuardAgentSettings(Strict):
    """``[guard.agents.<name>]``: the tools an agent is granted, and those it is denied."""

    tools: dict[str, GuardToolSettings] = Field(default_factory=dict)
    deny: tuple[str, ...] = ()


class GuardSettings(Strict):
    """``[guard]``: every agent's grants, and how the guard treats what they read.

    See ``tether.guard.policy.Policy`` for what each setting does.
    """

    agents: dict[str, GuardAgentSettings] = Field(default_factory=dict)
    default_allow_own_tools: bool = False
    taint_requires_approval: bool = True
    approval_timeout_s: float = Field(default=900.0, gt=0)
    quarantine_after: int = Field(default=3, ge=1)
    quarantine_window_s: float = Field(default=3600.0, gt=0)
