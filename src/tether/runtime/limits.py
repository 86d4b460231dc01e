"""Run limits. On by default: no run is ever unbounded."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Limits"]


class Limits(BaseModel):
    """Bounds on one agent run; each must be a positive number.

    Attributes:
        max_turns: model calls in the run.
        max_tool_calls: tool calls in the run, counted per call (a parallel batch
            that would cross the limit is cut at the limit).
        timeout_s: wall-clock time for the whole run.
        max_repeated_tool_calls: the same tool with the same arguments this many
            times in a row ends the run with ``loop_detected``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_turns: int = Field(default=20, gt=0)
    max_tool_calls: int = Field(default=50, gt=0)
    timeout_s: float = Field(default=300.0, gt=0)
    max_repeated_tool_calls: int = Field(default=3, ge=2)
