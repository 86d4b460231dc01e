"""What a reservation charged: ``Reservation``, to settle or release exactly once."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tether.gateway.budget.scope import BudgetScope


@dataclass(frozen=True)
class Reservation:
    """What ``reserve`` charged: settle or release it exactly once.

    Attributes:
        id: unique id (32 hex digits).
        scopes: the budgets charged, in the order given to ``reserve``.
        usd: the amount reserved on each scope.
        tokens: the tokens reserved on each scope.
        periods: the period key each scope was charged to, aligned with ``scopes``.
    """

    id: str
    scopes: tuple[BudgetScope, ...]
    usd: Decimal
    tokens: int
    periods: tuple[str, ...]
