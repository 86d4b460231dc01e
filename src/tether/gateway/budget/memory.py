"""``MemoryBudgetLedger``: budgets in this process's memory, for one process."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from tether.gateway.budget.counters import _check_room, _Counters
from tether.gateway.budget.ledger import Clock
from tether.gateway.budget.money import _check_amounts, _to_nanos
from tether.gateway.budget.period import _now, _utc, period_key
from tether.gateway.budget.reservation import Reservation
from tether.gateway.budget.scope import BudgetScope, _check_scopes
from tether.gateway.budget.usage import BudgetUsage


@dataclass(frozen=True)
class _Held:
    """An open reservation as the memory ledger keeps it."""

    keys: tuple[tuple[str, str], ...]
    nanousd: int
    tokens: int
    created_at: datetime


class MemoryBudgetLedger:
    """Budgets held in this process's memory; lost on exit.

    For one process (tests, a single embedded gateway). Replicas must share a
    ``SqlBudgetLedger`` instead, or each would spend the whole budget.

    Args:
        clock: the current time, for periods and the stale sweep (default: UTC now).
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or _now
        self._lock = threading.Lock()  # no operation awaits inside it: atomic per loop, and across threads
        self._rows: dict[tuple[str, str], _Counters] = {}
        self._held: dict[str, _Held] = {}

    def _row(self, key: tuple[str, str]) -> _Counters:
        return self._rows.setdefault(key, _Counters())

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        """Charge every scope or none; see ``BudgetLedger.reserve``."""
        _check_amounts(usd, tokens)
        _check_scopes(scopes)
        nanos = _to_nanos(usd, ROUND_CEILING)
        with self._lock:
            now = _utc(self._clock())
            periods = tuple(period_key(s.limit.period, now) for s in scopes)
            keys = tuple((str(s), p) for s, p in zip(scopes, periods, strict=True))
            for scope, key in zip(scopes, keys, strict=True):
                _check_room(scope, self._rows.get(key, _Counters()), usd, nanos, tokens)
            for key in keys:
                row = self._row(key)
                row.reserved_nanousd += nanos
                row.reserved_tokens += tokens
            reservation = Reservation(uuid.uuid4().hex, tuple(scopes), usd, tokens, periods)
            self._held[reservation.id] = _Held(keys, nanos, tokens, now)
        return reservation

    def _give_back(self, reservation_id: str, *, as_spent: bool = False) -> None:
        held = self._held.pop(reservation_id, None)
        if held is None:
            return  # settled, released or swept already
        for key in held.keys:
            row = self._row(key)
            row.reserved_nanousd -= held.nanousd
            row.reserved_tokens -= held.tokens
            if as_spent:
                row.spent_nanousd += held.nanousd
                row.spent_tokens += held.tokens

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Record the real cost; see ``SqlBudgetLedger.settle`` for a settle after a sweep."""
        _check_amounts(usd, tokens)
        nanos = _to_nanos(usd, ROUND_CEILING)
        with self._lock:
            self._give_back(reservation.id)
            for scope, period in zip(reservation.scopes, reservation.periods, strict=True):
                row = self._row((str(scope), period))
                row.spent_nanousd += nanos
                row.spent_tokens += tokens

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back; nothing happens if it is already settled or released."""
        with self._lock:
            self._give_back(reservation.id)

    async def usage(self, scope: BudgetScope, *, at: datetime | None = None) -> BudgetUsage:
        """The scope's usage in the period containing ``at`` (default: the clock's now)."""
        period = period_key(scope.limit.period, at if at is not None else self._clock())
        with self._lock:
            return self._rows.get((str(scope), period), _Counters()).usage(str(scope), period)

    async def sweep_stale(self, older_than: timedelta) -> int:
        """End reservations made more than ``older_than`` ago as spent in full (fail closed); returns how many."""
        with self._lock:
            cutoff = _utc(self._clock()) - older_than
            stale = [rid for rid, held in self._held.items() if held.created_at < cutoff]
            for rid in stale:
                self._give_back(rid, as_spent=True)
        return len(stale)

    async def aclose(self) -> None:
        """Nothing to free; present for the ``BudgetLedger`` protocol."""
