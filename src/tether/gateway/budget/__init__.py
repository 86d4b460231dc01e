"""Budgets: reserve a call's maximum cost before it is made, settle the real cost after.

Budgets fail closed. A call is placed only after ``reserve`` has charged its
worst-case cost to every budget that applies (route, agent, run, key); a
budget without room refuses the call with ``BudgetExceeded``, and a ledger
that cannot be reached raises ``StoreError`` — never "no answer, so allow".
After the call, ``settle`` replaces the reservation by the real cost, or
``release`` gives it back when the call never happened::

    reservation = await ledger.reserve(scopes, usd=worst_case, tokens=max_tokens)
    try:
        response = await call()
    except BaseException:
        await ledger.release(reservation)
        raise
    await ledger.settle(reservation, usd=real_cost, tokens=used_tokens)

Ledgers, one module each:

* ``MemoryBudgetLedger`` (``memory.py``) — one process; each operation runs without
  yielding to the event loop (under a lock, for threads), so it is atomic.
* ``SqlBudgetLedger`` (``sql.py``) — the store's database (SQLite or PostgreSQL), shared by
  every process and gateway replica that uses it, so N replicas never get N
  times the budget.
* ``RedisBudgetLedger`` (``redis.py``) — Redis, one round trip per operation.
* ``LeasedBudgetLedger`` (``lease.py``) — wraps a shared ledger and charges most
  calls against a per-replica lease in memory.

Money is counted in integer **nano-dollars** (1e-9 USD) so sums are exact:
amounts are rounded *up* to the next nano-dollar and limits *down*, so
rounding never lets a call through that the exact arithmetic would refuse.

Periods are UTC calendar days (``"2026-11-21"``) or months (``"2026-11"``),
or ``"all"`` for a lifetime budget; a reservation is charged, and settled, to
the period in which it was made.
"""

from tether.gateway.budget.lease import DEFAULT_LEASE_FRACTION, DEFAULT_LEASE_S, LeasedBudgetLedger, LeaseStats
from tether.gateway.budget.ledger import BudgetLedger, Clock
from tether.gateway.budget.memory import MemoryBudgetLedger
from tether.gateway.budget.period import LIFETIME, period_key
from tether.gateway.budget.redis import RedisBudgetLedger, SpendSource
from tether.gateway.budget.reservation import Reservation
from tether.gateway.budget.scope import BudgetScope, ScopeKind
from tether.gateway.budget.sql import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, SqlBudgetLedger
from tether.gateway.budget.usage import BudgetUsage

__all__ = [
    "DEFAULT_LEASE_FRACTION",
    "DEFAULT_LEASE_S",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_QUEUE",
    "LIFETIME",
    "BudgetLedger",
    "BudgetScope",
    "BudgetUsage",
    "Clock",
    "LeaseStats",
    "LeasedBudgetLedger",
    "MemoryBudgetLedger",
    "RedisBudgetLedger",
    "Reservation",
    "ScopeKind",
    "SpendSource",
    "SqlBudgetLedger",
    "period_key",
]
