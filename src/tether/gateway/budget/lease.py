"""Budget leases: reserve from a local slice of a shared budget, so most calls never wait on the database.

A shared ledger (``SqlBudgetLedger`` or ``RedisBudgetLedger``) makes every
reservation a round trip, twice per call (reserve, settle). ``LeasedBudgetLedger``
wraps one: for each budget (scope and period) it reserves a **lease** — a slice
of the budget, held in the shared ledger as one ordinary reservation — and
then reserves and settles calls against that slice in memory::

    shared ledger    route:support 2026-11-21   limit $50   spent $12.40   reserved $0.50 (this replica's lease)
    this replica     lease $0.50: calls in flight $0.06, settled since the lease began $0.21

Why this never overspends: the shared ledger grants a lease only when it has
room for all of it, exactly as it grants a call, and a replica places a call
on its lease only when the lease still has room for the call's maximum cost.
Every replica's leases together are therefore within the limit, and so is
every call.

What it costs, and the bounds:

* **Stranded room.** A lease's unused room is unavailable to other replicas
  until the lease ends, so near the limit a replica can refuse a call that
  another replica's lease still has room for. Leases are small (``fraction`` of
  the limit, default 1 %), shrink to a quarter of what is left when the budget
  runs low, and are not taken at all when less than twice a call's cost is
  left: then calls reserve on the shared ledger directly, exactly as without
  leases. A lease also ends after ``lease_s`` (default 1 s); a refused caller
  that retries a second later sees the room again.
* **Lag.** The shared ledger learns what was spent on a lease when the lease
  ends (at most ``lease_s`` after it began, once its calls in flight are
  settled): until then it shows the lease as reserved. ``usage`` on this
  ledger is exact for this replica's own leases.
* **A crash.** A replica that dies leaves its open leases (at most one per
  budget) reserved in the shared ledger until ``sweep_stale`` (scheduled by
  ``tether gateway serve``) ends them, counting each lease as spent in full:
  what its calls spent is not known to anyone else, and fail closed means
  never handing back as unspent money that may have been spent. The budget
  over-counts by the lease's unused room, at most ``fraction`` of the limit
  per budget; the calls themselves are in the cost ledger (``tether cost``,
  kept through the crash by the cost journal).

Run budgets (``run:<id>``) are leased too: a run lives in one process, so its
lease is never contended. ``fraction = 0`` turns leasing off (every call goes
to the shared ledger).

All state is touched from one event loop at a time, with no lock: every change
between two awaits is atomic. If the ledger is used from another event loop
later, the old loop's leases are ended (their calls in flight are given up,
and left to ``sweep_stale``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Final, TypeVar

from tether.errors import BudgetExceeded, StoreError
from tether.gateway.budget.ledger import BudgetLedger, Clock
from tether.gateway.budget.money import _check_amounts, _to_nanos, _to_usd
from tether.gateway.budget.period import _now, _utc, period_key
from tether.gateway.budget.reservation import Reservation
from tether.gateway.budget.scope import BudgetScope, _check_scopes
from tether.gateway.budget.usage import BudgetUsage
from tether.gateway.deps import bounded

__all__ = ["DEFAULT_LEASE_FRACTION", "DEFAULT_LEASE_S", "LeasedBudgetLedger", "LeaseStats"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: A lease's share of the budget's limit, by default.
DEFAULT_LEASE_FRACTION: Final = 0.01
#: How long a lease lasts before its spend is reported to the shared ledger, by default.
DEFAULT_LEASE_S: Final = 1.0
# A lease holds room for at least this many calls like the one that asked for it.
_CALLS_PER_LEASE: Final = 4
# Below this many calls' worth of room left, calls reserve on the shared ledger directly.
_DIRECT_BELOW_CALLS: Final = 2
# Attempts at a lease that the shared ledger refuses, each a quarter of what the refusal said was left.
_LEASE_ATTEMPTS: Final = 3
# Waits between attempts at recording a lease's spend while the shared ledger is down: doubling, capped.
_SETTLE_RETRY_FIRST_S = 0.2
_SETTLE_RETRY_MAX_S = 5.0
# Attempts at a usage read that no lease change overlapped.
_USAGE_ATTEMPTS: Final = 20

_Key = tuple[str, str]  # (scope, period)


@dataclass(eq=False)
class _Lease:
    """A slice of one budget, held in the shared ledger as ``held``; calls are charged to it in memory."""

    key: _Key
    scope: BudgetScope
    held: Reservation
    cap_nanos: int | None  # None: the budget has no USD limit, so no USD check here
    cap_tokens: int | None
    held_nanos: int  # what the shared ledger holds for the lease
    born: float
    reserved_nanos: int = 0  # calls in flight
    reserved_tokens: int = 0
    spent_nanos: int = 0  # calls settled since the lease began
    spent_tokens: int = 0
    inflight: int = 0
    calls: int = 0  # calls it took, and the largest of them: the size of its successor
    largest_nanos: int = 0
    largest_tokens: int = 0
    active: bool = True  # new calls may draw on it
    closing: bool = False

    def fits(self, nanos: int, tokens: int) -> bool:
        if not self.active:
            return False
        if self.cap_nanos is not None and self.spent_nanos + self.reserved_nanos + nanos > self.cap_nanos:
            return False
        return self.cap_tokens is None or self.spent_tokens + self.reserved_tokens + tokens <= self.cap_tokens

    def room_nanos(self) -> int:
        return max(0, (self.cap_nanos or 0) - self.spent_nanos - self.reserved_nanos)

    def room_tokens(self) -> int:
        return max(0, (self.cap_tokens or 0) - self.spent_tokens - self.reserved_tokens)


@dataclass(frozen=True)
class _Part:
    lease: _Lease
    nanos: int
    tokens: int


@dataclass
class _Hold:
    """A call's reservation: parts on leases, and the rest on the shared ledger."""

    parts: list[_Part]
    inner: Reservation | None
    created_at: datetime


@dataclass
class LeaseStats:
    """Counters for reports and tests.

    Attributes:
        local: reservations served entirely from leases.
        direct: reservations that went to the shared ledger for at least one budget.
        leases: leases taken.
        closed: leases ended and reported.
        refused_leases: lease requests the shared ledger refused (the budget was running low).
    """

    local: int = 0
    direct: int = 0
    leases: int = 0
    closed: int = 0
    refused_leases: int = 0


@dataclass(eq=False)
class _LoopState:
    loop: asyncio.AbstractEventLoop
    rotator: asyncio.Task[None] | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)


class LeasedBudgetLedger:
    """A ``BudgetLedger`` that serves most reservations from leases on a shared ledger; see the module docstring.

    Args:
        inner: the shared ledger (SQL or Redis) that holds the budgets and the leases.
        fraction: a lease's share of the budget's limit (0 < fraction <= 0.25; 0 turns leasing off).
        lease_s: how long a lease takes new calls before it ends and its spend is reported.
        clock: the current time, for periods; the inner ledger's clock, if it has one of its own.
    """

    def __init__(
        self,
        inner: BudgetLedger,
        *,
        fraction: float = DEFAULT_LEASE_FRACTION,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Clock | None = None,
    ) -> None:
        if not 0 <= fraction <= 0.25:
            raise ValueError(f"a lease fraction must be between 0 and 0.25 of the limit, got {fraction}")
        if lease_s <= 0:
            raise ValueError(f"a lease must last more than 0 s, got {lease_s}")
        self.inner = inner
        self._dependency: tuple[str, float] | None = None  # bound_waits
        self.fraction = Decimal(str(fraction))
        self.lease_s = lease_s
        self._clock: Clock = clock or getattr(inner, "_clock", None) or _now
        self._leases: dict[_Key, _Lease] = {}  # the active lease of each budget
        self._open: dict[_Key, list[_Lease]] = {}  # every lease not yet reported, active or ending
        self._acquiring: dict[_Key, asyncio.Task[_Lease | None]] = {}
        self._holds: dict[str, _Hold] = {}
        self._state: _LoopState | None = None
        # Lease changes in the shared ledger, for ``usage``: bumped when one starts and when it ends.
        self._version: Counter[str] = Counter()  # per scope
        self._changing: Counter[str] = Counter()
        self._closed = False
        self._id_prefix = uuid.uuid4().hex[:20]
        self._ids = itertools.count()
        self._pending_reports: list[_Lease] = []  # leases of an event loop that is gone, to report on this one
        self.stats = LeaseStats()

    # -- the loop, the rotation and background reports ----------------------------------------------------

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._state
        if state is not None and state.loop is loop:
            return state
        if state is not None:
            # Another loop before this one: its calls in flight can no longer be settled here. End its leases with
            # what they spent; what was in flight stays reserved in the shared ledger until ``sweep_stale``.
            self._abandon_all()
        state = self._state = _LoopState(loop)
        if self.fraction > 0:
            state.rotator = loop.create_task(self._rotate_forever(), name="tether-budget-leases")
        return state

    def _abandon_all(self) -> None:
        for leases in self._open.values():
            for lease in leases:
                lease.active = False
                lease.inflight = 0
                lease.reserved_nanos = lease.reserved_tokens = 0
        self._holds.clear()
        self._leases.clear()
        self._acquiring.clear()
        self._pending_reports = [lease for leases in self._open.values() for lease in leases if not lease.closing]
        self._state = None

    def _spawn(self, state: _LoopState, coro: object) -> None:
        task: asyncio.Task[None] = state.loop.create_task(coro)  # type: ignore[arg-type]
        state.background.add(task)
        task.add_done_callback(state.background.discard)

    async def _rotate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 2)
            self._rotate(time.monotonic())

    def _rotate(self, now: float) -> None:
        """End every lease older than ``lease_s``: it takes no new calls and is reported once its calls settle.

        A lease that took calls is renewed first: its successor is asked for while it still serves calls, and
        it ends when the successor is in place, so steady traffic never waits for the shared ledger.
        """
        state = self._state
        if state is None:
            return
        for key, lease in list(self._leases.items()):
            if now - lease.born < self.lease_s or key in self._acquiring:
                continue
            if lease.calls and not self._closed:
                task = state.loop.create_task(self._renew(state, key, lease))
                self._acquiring[key] = task
                task.add_done_callback(functools.partial(self._acquired, key))
            else:
                self._retire(state, key, lease)
        if self._pending_reports:
            stranded, self._pending_reports = self._pending_reports, []
            for lease in stranded:
                self._report(state, lease)

    def _retire(self, state: _LoopState, key: _Key, lease: _Lease) -> None:
        lease.active = False
        if self._leases.get(key) is lease:
            del self._leases[key]
        if lease.inflight == 0:
            self._report(state, lease)

    def _report(self, state: _LoopState, lease: _Lease) -> None:
        if lease.closing:
            return
        lease.closing = True
        self._spawn(state, self._settle_lease(lease))

    async def _settle_lease(self, lease: _Lease) -> None:
        """Replace the lease's reservation in the shared ledger by what its calls spent.

        Retried with backoff until the shared ledger takes it, never dropped: meanwhile the shared ledger
        still holds the whole lease, so every replica counts at least what its calls spent. If the process
        stops first, the lease stays reserved and the stale sweep counts all of it as spent (fail closed).
        """
        self._begin_change(lease.key[0])
        try:
            delay = _SETTLE_RETRY_FIRST_S
            attempt = 0
            while True:
                try:
                    await self.inner.settle(lease.held, usd=_to_usd(lease.spent_nanos), tokens=lease.spent_tokens)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the store is down: keep the spend and try again
                    attempt += 1
                    if attempt == 5:
                        logger.error(
                            "tether: the spend of a budget lease on %s ($%s, %d tokens) is not recorded yet (%s); "
                            "retrying until it is",
                            lease.key[0],
                            _to_usd(lease.spent_nanos),
                            lease.spent_tokens,
                            exc,
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _SETTLE_RETRY_MAX_S)
            if attempt >= 5:
                logger.info("tether: the spend of a budget lease on %s is recorded now", lease.key[0])
        finally:
            self._forget(lease)
            self._end_change(lease.key[0])
            self.stats.closed += 1

    def _forget(self, lease: _Lease) -> None:
        leases = self._open.get(lease.key)
        if leases is not None:
            with contextlib.suppress(ValueError):
                leases.remove(lease)
            if not leases:
                del self._open[lease.key]

    def _begin_change(self, scope: str) -> None:
        self._version[scope] += 1
        self._changing[scope] += 1

    def _end_change(self, scope: str) -> None:
        self._version[scope] += 1
        self._changing[scope] -= 1
        if not self._changing[scope]:
            del self._changing[scope]

    # -- taking a lease ------------------------------------------------------------------------------------

    def _wanted(self, scope: BudgetScope, nanos: int, tokens: int) -> tuple[int, int]:
        limit = scope.limit
        want_nanos = want_tokens = 0
        if limit.usd is not None:
            want_nanos = max(_to_nanos(limit.usd * self.fraction, ROUND_FLOOR), _CALLS_PER_LEASE * nanos)
        if limit.tokens is not None:
            want_tokens = max(int(limit.tokens * self.fraction), _CALLS_PER_LEASE * tokens)
        return want_nanos, want_tokens

    async def _lease(self, state: _LoopState, scope: BudgetScope, key: _Key, nanos: int, tokens: int) -> _Lease | None:
        """A new active lease for ``key`` with room for this call, or None when the budget is too low to lease.

        Callers that need a lease for the same budget at once share one request to the shared ledger. The
        request runs as a task of its own: a caller that is cancelled while waiting does not cancel it.
        """
        for _ in range(_LEASE_ATTEMPTS):
            task = self._acquiring.get(key)
            if task is None:
                task = state.loop.create_task(self._take(state, scope, key, nanos, tokens))
                self._acquiring[key] = task
                task.add_done_callback(functools.partial(self._acquired, key))
            lease = await asyncio.shield(task)
            if lease is None or lease.fits(nanos, tokens):
                return lease
            # Taken for a smaller call, or filled by others meanwhile: ask for one of our own.
        return None

    def _acquired(self, key: _Key, task: asyncio.Task[_Lease | None]) -> None:
        if self._acquiring.get(key) is task:
            del self._acquiring[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it; none may have been left to

    async def _renew(self, state: _LoopState, key: _Key, old: _Lease) -> _Lease | None:
        try:
            lease = await self._take(state, old.scope, key, old.largest_nanos, old.largest_tokens, renew=True)
        finally:
            if old.active:  # no successor (the budget runs low, or the ledger failed): it ends all the same
                self._retire(state, key, old)
        return lease

    async def _take(
        self, state: _LoopState, scope: BudgetScope, key: _Key, nanos: int, tokens: int, *, renew: bool = False
    ) -> _Lease | None:
        old = self._leases.get(key)
        if old is not None and not renew:
            # Our own active lease holds room the shared ledger counts as used: give it back before asking for more.
            self._retire(state, key, old)
        want_nanos, want_tokens = self._wanted(scope, nanos, tokens)
        limit = scope.limit
        for _ in range(_LEASE_ATTEMPTS):
            self._begin_change(key[0])
            try:
                held = await self.inner.reserve([scope], usd=_to_usd(want_nanos), tokens=want_tokens)
            except BudgetExceeded as refused:
                self.stats.refused_leases += 1
                # A quarter of what is left, so that replicas asking together leave each other room.
                if refused.unit == "tokens" and limit.tokens is not None:
                    left_tokens = int(limit.tokens - refused.used)
                    want_tokens = left_tokens // 4
                    if want_tokens < _DIRECT_BELOW_CALLS * max(tokens, 1):
                        return None
                elif limit.usd is not None:
                    left_nanos = _to_nanos(limit.usd, ROUND_FLOOR) - _to_nanos(
                        Decimal(str(refused.used)), ROUND_CEILING
                    )
                    want_nanos = left_nanos // 4
                    if want_nanos < _DIRECT_BELOW_CALLS * max(nanos, 1):
                        return None
                else:
                    return None
                continue
            finally:
                self._end_change(key[0])
            lease_key = (key[0], held.periods[0])
            lease = _Lease(
                key=lease_key,
                scope=scope,
                held=held,
                cap_nanos=want_nanos if limit.usd is not None else None,
                cap_tokens=want_tokens if limit.tokens is not None else None,
                held_nanos=want_nanos,
                born=time.monotonic(),
            )
            self.stats.leases += 1
            self._open.setdefault(lease_key, []).append(lease)
            if lease_key != key or self._closed or self._state is not state:
                # The period rolled over while asking (or the ledger closed): not a lease for this call.
                self._retire(state, lease_key, lease)
                return None
            previous = self._leases.get(key)
            self._leases[key] = lease
            if previous is not None:
                self._retire(state, key, previous)
            return lease
        return None

    # -- the ledger ------------------------------------------------------------------------------------------

    def bound_waits(self, dependency: str, timeout_s: float) -> None:
        """Bound every wait of ``reserve`` on the shared ledger: past ``timeout_s`` it raises
        ``DependencyUnavailable`` naming ``dependency``. Calls served from a lease never wait."""
        self._dependency = (dependency, timeout_s)

    def settles_locally(self, reservation: Reservation) -> bool:
        """Whether settling ``reservation`` touches only memory (its call was served from leases alone)."""
        hold = self._holds.get(reservation.id)
        return hold is not None and hold.inner is None

    async def _wait(self, awaitable: Awaitable[T]) -> T:
        if self._dependency is None:
            return await awaitable
        dependency, timeout_s = self._dependency
        return await bounded(awaitable, dependency=dependency, timeout_s=timeout_s)

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        """Charge every scope or none, from leases where they have room; see ``BudgetLedger.reserve``."""
        _check_amounts(usd, tokens)
        _check_scopes(scopes)
        if self._closed:
            raise StoreError("the leased budget ledger is closed: no call can be charged to it")
        state = self._loop_state()
        if self.fraction == 0:
            return await self.inner.reserve(scopes, usd=usd, tokens=tokens)
        nanos = _to_nanos(usd, ROUND_CEILING)
        now = _utc(self._clock())
        parts: list[_Part] = []
        direct: list[BudgetScope] = []
        periods: list[str] = []
        try:
            for scope in scopes:
                key = (str(scope), period_key(scope.limit.period, now))
                lease = self._leases.get(key)
                if lease is None or not lease.fits(nanos, tokens):
                    lease = await self._wait(self._lease(state, scope, key, nanos, tokens))
                if lease is not None and lease.fits(nanos, tokens):
                    lease.reserved_nanos += nanos
                    lease.reserved_tokens += tokens
                    lease.inflight += 1
                    lease.calls += 1
                    lease.largest_nanos = max(lease.largest_nanos, nanos)
                    lease.largest_tokens = max(lease.largest_tokens, tokens)
                    parts.append(_Part(lease, nanos, tokens))
                    periods.append(lease.key[1])
                else:
                    direct.append(scope)
                    periods.append("")
            inner: Reservation | None = None
            if direct:
                try:
                    inner = await self._wait(self.inner.reserve(direct, usd=usd, tokens=tokens))
                except BudgetExceeded as refused:
                    raise self._own_view(refused) from None
        except BaseException:
            self._give_back(parts)
            raise
        if inner is not None:
            by_scope = {str(s): p for s, p in zip(inner.scopes, inner.periods, strict=True)}
            periods = [p or by_scope[str(s)] for s, p in zip(scopes, periods, strict=True)]
            self.stats.direct += 1
        else:
            self.stats.local += 1
        # 32 hex digits like every reservation id: this ledger's random prefix and a counter (cheaper than uuid4).
        reservation = Reservation(
            f"{self._id_prefix}{next(self._ids):012x}", tuple(scopes), usd, tokens, tuple(periods)
        )
        self._holds[reservation.id] = _Hold(parts, inner, now)
        return reservation

    def _own_view(self, refused: BudgetExceeded) -> BudgetExceeded:
        """The refusal with this replica's unused lease room taken out of ``used``: it is not spent."""
        room = 0
        for (scope, _), leases in self._open.items():
            if scope == refused.scope:
                for lease in leases:
                    room += lease.room_nanos() if refused.unit == "usd" else lease.room_tokens()
        if not room:
            return refused
        used = refused.used - (float(_to_usd(room)) if refused.unit == "usd" else room)
        return BudgetExceeded(
            refused.scope, limit=refused.limit, used=used, requested=refused.requested, unit=refused.unit
        )

    def _give_back(self, parts: Sequence[_Part], spent: tuple[int, int] | None = None) -> None:
        state = self._state
        for part in parts:
            lease = part.lease
            if lease.closing:
                continue  # abandoned with an old event loop
            lease.reserved_nanos -= part.nanos
            lease.reserved_tokens -= part.tokens
            lease.inflight -= 1
            if spent is not None:
                lease.spent_nanos += spent[0]
                lease.spent_tokens += spent[1]
            if lease.inflight == 0 and not lease.active and state is not None:
                self._report(state, lease)

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Replace the reservation by the real cost; see ``BudgetLedger.settle``.

        Spend on a lease is recorded in the shared ledger when the lease ends.
        A reservation this ledger no longer holds (released, swept, or made
        under another event loop) is settled on the shared ledger, so spend is
        never dropped.
        """
        _check_amounts(usd, tokens)
        hold = self._holds.pop(reservation.id, None)
        if hold is None:
            await self.inner.settle(reservation, usd=usd, tokens=tokens)
            return
        self._give_back(hold.parts, (_to_nanos(usd, ROUND_CEILING), tokens))
        if hold.inner is not None:
            try:
                await self.inner.settle(hold.inner, usd=usd, tokens=tokens)
            except BaseException:
                # The shared ledger did not take it: keep what is left, so a retry settles only that.
                self._holds[reservation.id] = _Hold([], hold.inner, hold.created_at)
                raise

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back; nothing happens if it is already settled or released."""
        hold = self._holds.pop(reservation.id, None)
        if hold is None:
            await self.inner.release(reservation)  # not ours (made with leasing off): the shared ledger's
            return
        self._give_back(hold.parts)
        if hold.inner is not None:
            await self.inner.release(hold.inner)

    async def usage(self, scope: BudgetScope, *, at: datetime | None = None) -> BudgetUsage:
        """The budget's usage across every replica, with this replica's leases counted as what they hold.

        The shared ledger counts a lease of this replica as reserved in full;
        here it counts as what its calls spent and hold in flight instead.
        Other replicas' leases count in full.
        """
        when = at if at is not None else self._clock()
        key = (str(scope), period_key(scope.limit.period, when))
        for attempt in range(_USAGE_ATTEMPTS):
            last = attempt == _USAGE_ATTEMPTS - 1
            if self._changing[key[0]] and not last:
                await asyncio.sleep(0.001)  # one of its leases is being taken or reported: read once it is done
                continue
            version = self._version[key[0]]
            shared = await self.inner.usage(scope, at=at)
            if version == self._version[key[0]] or last:
                break
        # Every lease the shared ledger still holds for us, those being reported included.
        leases = self._open.get(key, [])
        held_nanos = sum(lease.held_nanos for lease in leases)
        held_tokens = sum(lease.held.tokens for lease in leases)
        return BudgetUsage(
            scope=shared.scope,
            period=shared.period,
            spent_usd=shared.spent_usd + _to_usd(sum(lease.spent_nanos for lease in leases)),
            reserved_usd=shared.reserved_usd
            - _to_usd(held_nanos)
            + _to_usd(sum(lease.reserved_nanos for lease in leases)),
            spent_tokens=shared.spent_tokens + sum(lease.spent_tokens for lease in leases),
            reserved_tokens=shared.reserved_tokens - held_tokens + sum(lease.reserved_tokens for lease in leases),
        )

    async def sweep_stale(self, older_than: timedelta) -> int:
        """Count this replica's calls and the shared ledger's reservations older than ``older_than`` as spent."""
        # Our own leases first: each is reported (or, with calls still in flight, stays open until they settle),
        # so a sweep after a long pause never drops what a lease spent.
        await self.flush()
        cutoff = _utc(self._clock()) - older_than
        stale = [rid for rid, hold in self._holds.items() if hold.created_at < cutoff]
        for rid in stale:
            hold = self._holds.pop(rid)
            # Fail closed, as the shared ledgers sweep: a call that never settled may have been billed in full.
            for part in hold.parts:
                self._give_back([part], (part.nanos, part.tokens))
            if hold.inner is not None:
                await self.inner.settle(hold.inner, usd=hold.inner.usd, tokens=hold.inner.tokens)
        return len(stale) + await self.inner.sweep_stale(older_than)

    async def flush(self) -> None:
        """End every lease now and wait until each is reported (calls still in flight keep theirs open)."""
        state = self._loop_state()
        for key, lease in list(self._leases.items()):
            self._retire(state, key, lease)
        self._rotate(time.monotonic())
        while state.background:
            await asyncio.gather(*list(state.background), return_exceptions=True)

    async def aclose(self, settle_timeout_s: float = 5.0) -> None:
        """Report every lease (what calls still in flight spend is then settled on the shared ledger) and close.

        Waits up to ``settle_timeout_s`` for the reports (they retry while the shared ledger is down).
        """
        if self._closed:
            return
        state = self._state
        if state is not None and state.loop is asyncio.get_running_loop():
            if state.rotator is not None:
                state.rotator.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state.rotator
            for key, lease in list(self._leases.items()):
                self._retire(state, key, lease)
            self._rotate(time.monotonic())
            # Leases with calls still in flight: report what they spent so far and settle the rest directly.
            for leases in list(self._open.values()):
                for lease in leases:
                    if not lease.closing:
                        self._report(state, lease)
            self._holds.clear()
            # Bounded: with the shared ledger down, a report retries forever. One still unrecorded at the
            # bound leaves its lease reserved, and the stale sweep counts all of it as spent.
            deadline = time.monotonic() + settle_timeout_s
            while state.background and (left := deadline - time.monotonic()) > 0:
                await asyncio.wait(list(state.background), timeout=left)
            if state.background:
                logger.error(
                    "tether: %d budget lease(s) could not be reported before shutdown; they stay reserved and the "
                    "stale sweep counts them as spent in full",
                    len(state.background),
                )
                for task in list(state.background):
                    task.cancel()
                await asyncio.gather(*list(state.background), return_exceptions=True)
        self._closed = True
        await self.inner.aclose()
