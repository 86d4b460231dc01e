"""Trajectory scorers: ``required_tools``, ``forbidden_tools``, ``tool_order``, ``max_steps``."""

from __future__ import annotations

from collections.abc import Sequence

from tether.errors import UserError
from tether.evals.scorers.check import Check
from tether.evals.scorers.observation import Observation
from tether.evals.scorers.registry import scorer
from tether.evals.scorers.score import Score


def _names(value: Sequence[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@scorer("required_tools", kind="trajectory")
def _required_tools(obs: Observation, tools: Sequence[str] | str) -> Score:
    ran = {c.name for c in obs.executed}
    missing = [t for t in _names(tools) if t not in ran]
    return Score(not missing, f"never ran {', '.join(missing)}" if missing else "ran every required tool")


def required_tools(*tools: str, label: str | None = None) -> Check:
    return Check("required_tools", {"tools": list(tools)}, label)


@scorer("forbidden_tools", kind="trajectory")
def _forbidden_tools(obs: Observation, tools: Sequence[str] | str, attempted: bool = False) -> Score:
    """No call of these tools ran (``attempted=True``: none was even asked for)."""
    calls = obs.calls if attempted else obs.executed
    hit = sorted({c.name for c in calls if c.name in _names(tools)})
    verb = "asked for" if attempted else "ran"
    return Score(not hit, f"{verb} {', '.join(hit)}" if hit else f"{verb} none of {', '.join(_names(tools))}")


def forbidden_tools(*tools: str, attempted: bool = False, label: str | None = None) -> Check:
    return Check("forbidden_tools", {"tools": list(tools), "attempted": attempted}, label)


@scorer("tool_order", kind="trajectory")
def _tool_order(obs: Observation, tools: Sequence[str] | str) -> Score:
    """The tools ran in this order (other calls may come in between)."""
    wanted = _names(tools)
    position = 0
    for call in obs.executed:
        if position < len(wanted) and call.name == wanted[position]:
            position += 1
    if position == len(wanted):
        return Score(True, "ran " + " → ".join(wanted) + " in order")
    ran = " → ".join(c.name for c in obs.executed) or "nothing"
    return Score(False, f"expected {' → '.join(wanted)} in order; ran {ran}")


def tool_order(*tools: str, label: str | None = None) -> Check:
    return Check("tool_order", {"tools": list(tools)}, label)


@scorer("max_steps", kind="trajectory")
def _max_steps(obs: Observation, steps: int, count: str = "tool_calls") -> Score:
    if count not in ("tool_calls", "turns"):
        raise UserError(f"max_steps: count must be tool_calls or turns, not {count!r}")
    used = obs.result.tool_calls if count == "tool_calls" else obs.result.turns
    return Score(used <= steps, f"{used} {count.replace('_', ' ')} (at most {steps})")


def max_steps(steps: int, *, count: str = "tool_calls", label: str | None = None) -> Check:
    return Check("max_steps", {"steps": steps, "count": count}, label)
