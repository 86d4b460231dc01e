"""Run limits. On by default: no run is ever unbounded."""

from __future__ import annotations

from decimal import Decimal

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
        max_handoff_bounces: two agents handing work back and forth (A→B, B→A, …) this many
            times in a row, anywhere in the run tree, end every run on the chain with ``loop_detected``.
        max_tokens: tokens (input + output) the whole run may use; None for no limit.
            Checked before each model call; through a gateway route it is also the run's
            own budget, reserved before the call (a call that might cross it is not made).
        max_cost_usd: dollars the whole run may spend; None for no limit. Enforced like
            ``max_tokens``; through a gateway route, by the gateway's budget reservation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_turns: int = Field(default=20, gt=0)
    max_tool_calls: int = Field(default=50, gt=0)
    timeout_s: float = Field(default=300.0, gt=0)
    max_repeated_tool_calls: int = Field(default=3, ge=2)
    max_handoff_bounces: int = Field(default=4, ge=2)
    max_tokens: int | None = Field(default=None, gt=0)
    max_cost_usd: Decimal | None = Field(default=None, gt=0, allow_inf_nan=False)
