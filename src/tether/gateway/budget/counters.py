"""A budget's counters in one period, and the check that a call fits its limits."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from tether.errors import BudgetExceeded
from tether.gateway.budget.money import _to_nanos, _to_usd
from tether.gateway.budget.scope import BudgetScope
from tether.gateway.budget.usage import BudgetUsage


@dataclass
class _Counters:
    """A (scope, period) row: money in nano-dollars."""

    spent_nanousd: int = 0
    reserved_nanousd: int = 0
    spent_tokens: int = 0
    reserved_tokens: int = 0

    def usage(self, scope: str, period: str) -> BudgetUsage:
        return BudgetUsage(
            scope=scope,
            period=period,
            spent_usd=_to_usd(self.spent_nanousd),
            reserved_usd=_to_usd(self.reserved_nanousd),
            spent_tokens=self.spent_tokens,
            reserved_tokens=self.reserved_tokens,
        )


def _check_room(scope: BudgetScope, row: _Counters, usd: Decimal, nanos: int, tokens: int) -> None:
    """Raise ``BudgetExceeded`` unless spent + reserved + this call fits every limit of ``scope``."""
    limit = scope.limit
    if limit.usd is not None:
        used = row.spent_nanousd + row.reserved_nanousd
        if used + nanos > _to_nanos(limit.usd, ROUND_FLOOR):
            raise BudgetExceeded(
                str(scope), limit=float(limit.usd), used=float(_to_usd(used)), requested=float(usd), unit="usd"
            )
    if limit.tokens is not None:
        used = row.spent_tokens + row.reserved_tokens
        if used + tokens > limit.tokens:
            raise BudgetExceeded(str(scope), limit=limit.tokens, used=used, requested=tokens, unit="tokens")
