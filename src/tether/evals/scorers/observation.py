"""``Observation``: what a scorer sees of one trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tether.models.base import Model
from tether.runtime.agent import RunResult, ToolCallRecord


@dataclass(frozen=True)
class Observation:
    """What a scorer sees of one trial."""

    task: str
    result: RunResult
    env: Any
    judge_model: Model | None = None
    #: Judge calls' cost (None: unknown price), added to by judge scorers (shared, mutable on purpose).
    judge_spend: list[Decimal | None] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.result.output

    @property
    def calls(self) -> tuple[ToolCallRecord, ...]:
        return self.result.tool_log

    @property
    def executed(self) -> list[ToolCallRecord]:
        """The calls whose tool really ran (not denied, not hallucinated)."""
        return [c for c in self.result.tool_log if c.executed]
