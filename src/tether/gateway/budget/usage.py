"""A budget's state in one period: ``BudgetUsage``."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class BudgetUsage:
    """A budget's state in one period.

    Attributes:
        scope: the budget, e.g. ``route:support``.
        period: the period key (``"2026-11-21"``, ``"2026-11"`` or ``"all"``).
        spent_usd: settled spend.
        reserved_usd: held by calls in flight.
        spent_tokens: settled tokens.
        reserved_tokens: tokens held by calls in flight.
    """

    scope: str
    period: str
    spent_usd: Decimal
    reserved_usd: Decimal
    spent_tokens: int
    reserved_tokens: int

    @property
    def used_usd(self) -> Decimal:
        """Spent plus reserved: what a new reservation is checked against."""
        return self.spent_usd + self.reserved_usd

    @property
    def used_tokens(self) -> int:
        """Spent plus reserved tokens."""
        return self.spent_tokens + self.reserved_tokens
