"""One budget tree for a run and every sub-run it starts, on any worker.

Filled in below ``BudgetNode`` (the chain a ``ParentLink`` carries).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["BudgetNode"]


@dataclass(frozen=True, slots=True)
class BudgetNode:
    """One run of a budget chain: its id, agent and the limits its whole subtree must stay within.

    Attributes:
        run_id: the run.
        agent: its agent (named in refusals: "the parent run 3f… (supervisor)").
        max_tokens: ``Limits.max_tokens`` of the run; None for no limit.
        max_cost_usd: ``Limits.max_cost_usd``; None for no limit.
        max_turns: ``Limits.max_turns`` (model calls).
        max_tool_calls: ``Limits.max_tool_calls``.
    """

    run_id: str
    agent: str
    max_tokens: int | None = None
    max_cost_usd: Decimal | None = None
    max_turns: int | None = None
    max_tool_calls: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (money as a string, never a float)."""
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "max_tokens": self.max_tokens,
            "max_cost_usd": str(self.max_cost_usd) if self.max_cost_usd is not None else None,
            "max_turns": self.max_turns,
            "max_tool_calls": self.max_tool_calls,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetNode:
        """The node ``to_json`` gave."""
        cost = data.get("max_cost_usd")
        return cls(
            run_id=str(data["run_id"]),
            agent=str(data["agent"]),
            max_tokens=data.get("max_tokens"),
            max_cost_usd=Decimal(cost) if cost is not None else None,
            max_turns=data.get("max_turns"),
            max_tool_calls=data.get("max_tool_calls"),
        )
