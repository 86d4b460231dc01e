"""The ``BudgetLedger`` protocol every ledger implements, and its ``Clock``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from tether.gateway.budget.reservation import Reservation
from tether.gateway.budget.scope import BudgetScope
from tether.gateway.budget.usage import BudgetUsage

Clock = Callable[[], datetime]


class BudgetLedger(Protocol):
    """Where budgets are charged. Every method is safe to call concurrently."""

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        """Charge ``usd`` and ``tokens`` as reserved to every scope, or to none.

        Raises:
            BudgetExceeded: the first scope (in the order given) without room; nothing was charged.
            ValueError: negative amounts, or the same scope twice.
        """
        ...

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Replace the reservation by the real cost, which may exceed it (it is recorded anyway).

        Once called, the settle happens even if the caller is cancelled while it waits.
        """
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back: the call never happened or used nothing. Idempotent.

        Once called, the release happens even if the caller is cancelled while it waits.
        """
        ...

    async def usage(self, scope: BudgetScope, *, at: datetime | None = None) -> BudgetUsage:
        """The scope's usage in the period containing ``at`` (default: now)."""
        ...

    async def sweep_stale(self, older_than: timedelta) -> int:
        """Release reservations older than ``older_than`` (left by a process that died mid-call)."""
        ...

    async def aclose(self) -> None:
        """Finish pending work and free resources."""
        ...
