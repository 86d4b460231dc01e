"""Least privilege: which agent may call which tool, with which arguments, and when a person must approve.

A policy grants each agent named tools; everything not granted is denied. In
``tether.toml``::

    [guard.agents.oncall.tools]
    read_logs = {}
    restart_service = { when = ["service in ['checkout', 'search']", "env != 'prod'"], approval = "always" }
    refund = { when = ["amount <= 100"] }

or in code::

    Policy(agents={"oncall": AgentPolicy(tools={"read_logs": ToolRule(), "refund": ToolRule(when=("amount <= 100",))})})

A ``when`` constraint is ``<argument> <operator> <value>``: ``<= < >= > == !=``
against a number, string or boolean; ``in`` / ``not in`` a list; ``under`` a
path prefix (normalised, so ``..`` cannot climb out); ``matches`` a regular
expression (the whole value must match). ``<argument>`` may be dotted to reach
into an object (``target.host``). Nothing is evaluated as code.

``approval`` is ``"default"`` (irreversible tools, and write/irreversible tools
in a tainted run, need approval), ``"always"`` or ``"never"``.

The ``[guard]`` tables are part of ``tether.config.Settings`` (schema:
``tether.config.guard``), so an unknown or misspelt key is refused with the
rest of tether.toml, naming its table; ``Policy.from_settings(settings.guard)``
builds the policy without reading the file again. A policy with an unknown
tool, contradictory rules (a tool both granted and denied; constraints no value
can meet, such as ``amount <= 10`` and ``amount >= 20``) or a constraint that
does not parse is refused when it is built or bound to an agent, with the line
in tether.toml and the reason.
"""

from __future__ import annotations

import ast
import math
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from tether.config import GuardSettings, describe_errors
from tether.errors import ConfigError

__all__ = ["AgentPolicy", "Constraint", "Policy", "PolicyError", "ToolRule", "parse_constraint"]

Approval = Literal["default", "always", "never"]
_OPERATORS: Final = ("<=", ">=", "==", "!=", "<", ">", "not in", "in", "under", "matches")
_CONSTRAINT = re.compile(
    r"^\s*(?P<arg>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s+"
    r"(?P<op><=|>=|==|!=|<|>|not\s+in|in|under|matches)\s+(?P<value>.+?)\s*$",
    re.DOTALL,
)
_MISSING: Final = object()


class PolicyError(ConfigError):
    """A policy that cannot be enforced as written; the message names the place and the fix."""


@dataclass(frozen=True)
class Constraint:
    """One parsed ``when`` condition on a tool call's arguments."""

    text: str
    path: tuple[str, ...]
    op: str
    value: Any
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def check(self, arguments: Mapping[str, Any]) -> str | None:
        """None when the arguments meet it; otherwise why not, for the model and the audit."""
        current: Any = arguments
        for part in self.path:
            if not isinstance(current, Mapping) or part not in current:
                return f"{self.text}: argument {'.'.join(self.path)!r} is missing"
            current = current[part]
        op, value = self.op, self.value
        shown = repr(current) if not isinstance(current, str) or len(current) <= 80 else repr(current[:80] + "…")
        try:
            if op in ("<=", ">=", "<", ">"):
                if isinstance(current, bool) or not isinstance(current, int | float) or math.isnan(current):
                    return f"{self.text}: {'.'.join(self.path)} must be a number, got {shown}"
                ok = {"<=": current <= value, ">=": current >= value, "<": current < value, ">": current > value}[op]
            elif op == "==":
                ok = _equal(current, value)
            elif op == "!=":
                ok = not _equal(current, value)
            elif op == "in":
                ok = any(_equal(current, v) for v in value)
            elif op == "not in":
                ok = not any(_equal(current, v) for v in value)
            elif op == "under":
                ok = isinstance(current, str) and _under(current, value)
            else:  # matches
                assert self._regex is not None
                ok = isinstance(current, str) and self._regex.fullmatch(current) is not None
        except TypeError:
            ok = False
        return None if ok else f"{self.text}: {'.'.join(self.path)} is {shown}"


def _equal(a: Any, b: Any) -> bool:
    """Equal and of one type (True is not 1, "1" is not 1), or the same number (1 == 1.0)."""
    return (a == b and type(a) is type(b)) or _same_number(a, b)


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def _under(path: str, prefix: str) -> bool:
    if "\x00" in path:
        return False
    normal = posixpath.normpath(path)
    if not normal.startswith("/") and prefix.startswith("/"):
        return False
    root = posixpath.normpath(prefix)
    return normal == root or normal.startswith(root.rstrip("/") + "/")


def parse_constraint(text: str) -> Constraint:
    """Parse ``amount <= 100``, ``service in ['a', 'b']``, ``path under '/srv/app'``, ``name matches '^ci-'``.

    Raises:
        ValueError: the reason it does not parse, phrased for the policy's author.
    """
    match = _CONSTRAINT.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not '<argument> <operator> <value>' (operators: {', '.join(_OPERATORS)}), "
            "e.g. \"amount <= 100\" or \"service in ['checkout', 'search']\""
        )
    op = " ".join(match["op"].split())
    raw = match["value"]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ValueError(
            f"{text!r}: the value {raw!r} is not a literal (quote strings: 'prod'; lists: ['a', 'b'])"
        ) from None
    regex: re.Pattern[str] | None = None
    if op in ("<=", ">=", "<", ">"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{text!r}: {op} needs a number, got {raw}")
    elif op in ("in", "not in"):
        if not isinstance(value, list | tuple | set | frozenset) or not value:
            raise ValueError(f"{text!r}: {op} needs a non-empty list, e.g. ['a', 'b']")
        value = tuple(value)
    elif op == "under":
        if not isinstance(value, str) or not value.startswith("/"):
            raise ValueError(f"{text!r}: under needs an absolute path prefix in quotes, e.g. '/srv/app'")
    elif op == "matches":
        if not isinstance(value, str):
            raise ValueError(f"{text!r}: matches needs a regular expression in quotes")
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise ValueError(f"{text!r}: the regular expression does not compile: {exc}") from None
    elif isinstance(value, list | dict | set | tuple):
        raise ValueError(f"{text!r}: {op} compares with one value; use 'in' for a list")
    return Constraint(text=text.strip(), path=tuple(match["arg"].split(".")), op=op, value=value, _regex=regex)


@dataclass(frozen=True)
class ToolRule:
    """What an agent may do with one granted tool.

    Attributes:
        when: constraints every call's arguments must meet.
        approval: ``default`` (by risk and taint), ``always`` or ``never``.
        secrets: credential names this (agent, tool) may receive (see ``tether.guard.credentials``).
    """

    when: tuple[str, ...] = ()
    approval: Approval = "default"
    secrets: tuple[str, ...] = ()
    constraints: tuple[Constraint, ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.approval not in ("default", "always", "never"):
            raise ValueError(f"approval {self.approval!r} must be 'default', 'always' or 'never'")
        object.__setattr__(self, "constraints", tuple(parse_constraint(c) for c in self.when))
        _check_consistent(self.constraints)

    def violation(self, arguments: Mapping[str, Any]) -> str | None:
        """The first constraint the arguments break, or None."""
        for constraint in self.constraints:
            why = constraint.check(arguments)
            if why is not None:
                return why
        return None


def _check_consistent(constraints: Sequence[Constraint]) -> None:
    """Refuse constraints no value can meet: empty numeric ranges, disjoint equalities and sets."""
    by_path: dict[tuple[str, ...], list[Constraint]] = {}
    for c in constraints:
        by_path.setdefault(c.path, []).append(c)
    for path, group in by_path.items():
        name = ".".join(path)
        low, high = -math.inf, math.inf
        low_open = high_open = False
        allowed: set[Any] | None = None
        for c in group:
            if c.op in (">=", ">") and (c.value > low or (c.value == low and c.op == ">")):
                low, low_open = c.value, c.op == ">"
            if c.op in ("<=", "<") and (c.value < high or (c.value == high and c.op == "<")):
                high, high_open = c.value, c.op == "<"
            if c.op in ("==", "in"):
                values = {c.value} if c.op == "==" else set(c.value)
                allowed = values if allowed is None else allowed & values
        for c in group:
            if c.op in ("!=", "not in") and allowed is not None:
                allowed -= {c.value} if c.op == "!=" else set(c.value)
        if low > high or (low == high and (low_open or high_open)):
            raise ValueError(f"constraints on {name} contradict each other: no value is both {low} and {high}")
        if allowed is not None:
            numeric = [v for v in allowed if isinstance(v, int | float) and not isinstance(v, bool)]
            others = [v for v in allowed if v not in numeric]
            in_range = [
                v
                for v in numeric
                if (v > low or (v == low and not low_open)) and (v < high or (v == high and not high_open))
            ]
            if not in_range and not others:
                raise ValueError(f"constraints on {name} contradict each other: no value meets them all")


@dataclass(frozen=True)
class AgentPolicy:
    """One agent's grants: the tools it may call (and how); everything else is denied."""

    tools: Mapping[str, ToolRule] = field(default_factory=dict)
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        both = sorted(set(self.tools) & set(self.deny))
        if both:
            raise ValueError(f"{', '.join(both)} both granted and denied: remove one of the two")

    @classmethod
    def allow(cls, *tools: str) -> AgentPolicy:
        """Grant ``tools`` with no constraints and default approvals."""
        return cls(tools={name: ToolRule() for name in tools})


@dataclass(frozen=True)
class Policy:
    """Every agent's grants, and how the guard treats what they read.

    Attributes:
        agents: grants by agent name. An agent not listed here gets no tools — unless
            ``default_allow_own_tools`` is on, when it may call the tools it was built with (default
            approvals still apply). Without any policy the guard uses ``Policy.open()``.
        taint_requires_approval: after a run reads untrusted content, its write and irreversible calls
            need approval.
        approval_timeout_s: how long an approval may wait before it counts as a denial.
        quarantine_after: incidents of one agent (within ``quarantine_window_s``) that quarantine it.
        quarantine_window_s: the window for ``quarantine_after``.
        source: where the policy came from, for messages (a tether.toml path).
    """

    agents: Mapping[str, AgentPolicy] = field(default_factory=dict)
    default_allow_own_tools: bool = False
    taint_requires_approval: bool = True
    approval_timeout_s: float = 900.0
    quarantine_after: int = 3
    quarantine_window_s: float = 3600.0
    source: str = "code"
    _lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def open(cls) -> Policy:
        """No grants beyond each agent's own tools; default approvals, taint and detection on."""
        return cls(default_allow_own_tools=True)

    def for_agent(self, agent: str) -> AgentPolicy | None:
        return self.agents.get(agent)

    def line_of(self, agent: str, tool: str | None = None) -> str:
        """``tether.toml:12`` for an agent's (or its tool's) table, when the policy came from a file."""
        line = self._lines.get(f"{agent}.{tool}" if tool else agent) or self._lines.get(agent)
        return f"{self.source}:{line}" if line else self.source

    def check_tools(self, agent: str, known: Iterable[str]) -> None:
        """Refuse a policy that grants or denies ``agent`` a tool it does not have.

        Raises:
            PolicyError: naming the tool, the line and the tools the agent has.
        """
        grants = self.agents.get(agent)
        if grants is None:
            return
        have = set(known)
        for name in [*grants.tools, *grants.deny]:
            if name not in have:
                raise PolicyError(
                    f"{self.line_of(agent, name)}: the policy for agent {agent!r} names tool {name!r}, which the "
                    f"agent does not have (its tools: {', '.join(sorted(have)) or 'none'})"
                )

    @classmethod
    def from_settings(cls, guard: GuardSettings, *, source: str = "code", text: str | None = None) -> Policy:
        """The policy ``[guard]`` describes, already validated as part of ``tether.config.Settings``.

        Args:
            guard: ``settings.guard``.
            source: where it was read from, for messages (``settings.source``).
            text: the file's text, for line numbers in messages (``settings.source_text``).

        Raises:
            PolicyError: a constraint that does not parse or that no value can meet, or a tool both
                granted and denied; with the line and the reason.
        """
        lines = _table_lines(text) if text is not None else {}

        def where(key: str) -> str:
            line = lines.get(key)
            return f"{source}:{line}" if line else source

        agents: dict[str, AgentPolicy] = {}
        for agent, grants in guard.agents.items():
            tools: dict[str, ToolRule] = {}
            for name, rule in grants.tools.items():
                try:
                    tools[name] = ToolRule(when=rule.when, approval=rule.approval, secrets=rule.secrets)
                except ValueError as exc:
                    line = _line_of_text(text, next(iter(rule.when), name)) if text else None
                    at = f"{source}:{line}" if line else where(f"{agent}.{name}")
                    raise PolicyError(f"{at}: agent {agent!r}, tool {name!r}: {exc}") from None
            try:
                agents[agent] = AgentPolicy(tools=tools, deny=grants.deny)
            except ValueError as exc:
                raise PolicyError(f"{where(agent)}: agent {agent!r}: {exc}") from None
        return cls(
            agents=agents,
            default_allow_own_tools=guard.default_allow_own_tools,
            taint_requires_approval=guard.taint_requires_approval,
            approval_timeout_s=guard.approval_timeout_s,
            quarantine_after=guard.quarantine_after,
            quarantine_window_s=guard.quarantine_window_s,
            source=source,
            _lines=lines,
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "code") -> Policy:
        """A policy from a ``[guard]`` table as a mapping (validated as tether.toml's is).

        Raises:
            ConfigError: a key unknown, missing or of the wrong kind, naming it and its table.
            PolicyError: as ``from_settings``.
        """
        from pydantic import ValidationError

        from tether.config import SettingsError

        try:
            guard = GuardSettings.model_validate(data)
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc, GuardSettings, source, table=("guard",))) from None
        return cls.from_settings(guard, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """The ``[guard]`` table of a tether.toml file (an empty policy if it has none).

        The file is read as a whole by ``tether.config.load_settings``, so every table in it is
        checked; to build the policy from settings already loaded, use ``from_settings``.
        """
        from tether.config import load_settings

        settings = load_settings(path)
        return cls.from_settings(settings.guard, source=settings.source, text=settings.source_text)


_HEADER = re.compile(r"^\s*\[\s*guard\.agents\.([A-Za-z0-9_-]+)(?:\.tools)?\s*\]\s*$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _table_lines(text: str) -> dict[str, int]:
    """Line numbers of ``[guard.agents.X]`` tables and their tool keys, for messages."""
    lines: dict[str, int] = {}
    agent: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            agent = header.group(1)
            lines.setdefault(agent, number)
            continue
        if line.lstrip().startswith("["):
            if line.strip() in ("[guard]",):
                lines.setdefault("", number)
            agent = None
            continue
        key = _KEY.match(line)
        if agent is not None and key:
            lines.setdefault(f"{agent}.{key.group(1)}", number)
    return lines


def _line_of_text(text: str, needle: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return None
