"""Budget leases: most calls charged in memory, never past the shared budget, spend always reported.

The ledger behaviours every ledger has (atomic scopes, periods, exact sums,
concurrency, the sweep) are tested on the leased ledger too, in
``test_budget.py``. These tests cover what leasing adds: how often the shared
ledger is asked, replicas sharing one budget, the report of a lease's spend,
refusals near the limit, cancellation, failures, event loops and the bounds
the module docstring promises.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from tests.store import conftest as store_fixtures
from tether.config import BudgetLimit, GatewayConfig
from tether.errors import BudgetExceeded, StoreUnavailable
from tether.gateway.budget import BudgetScope, BudgetUsage, MemoryBudgetLedger, Reservation, SqlBudgetLedger
from tether.gateway.budget.lease import LeasedBudgetLedger
from tether.store import open_store

store_url = store_fixtures.store_url


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The database of ``store_url``: each test that needs one names it with ``indirect=True``."""
    return str(request.param)


CENT = Decimal("0.01")
SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
T0 = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


def route(usd: str = "1", *, tokens: int | None = None, period: str | None = None) -> BudgetScope:
    return BudgetScope("route", "support", BudgetLimit.model_validate({"usd": usd, "tokens": tokens, "period": period}))


class Counting(MemoryBudgetLedger):
    """A memory ledger that counts what reaches it, and can be held up or made to fail."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: T0)
        self.reserves = 0
        self.settles = 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        self.reserves += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await super().reserve(scopes, usd=usd, tokens=tokens)

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        self.settles += 1
        await super().settle(reservation, usd=usd, tokens=tokens)


@pytest.fixture
async def counted() -> AsyncIterator[tuple[LeasedBudgetLedger, Counting]]:
    inner = Counting()
    ledger = LeasedBudgetLedger(inner, clock=lambda: T0)
    yield ledger, inner
    await ledger.aclose()


async def spend(ledger: LeasedBudgetLedger | SqlBudgetLedger, scope: BudgetScope, usd: Decimal = CENT) -> None:
    reservation = await ledger.reserve([scope], usd=usd, tokens=1)
    await ledger.settle(reservation, usd=usd, tokens=1)


async def shared_usage(url: str, scope: BudgetScope) -> BudgetUsage:
    """What the database says, through a ledger of its own (no leases)."""
    reader = SqlBudgetLedger.open(url)
    try:
        return await reader.usage(scope)
    finally:
        await reader.aclose()


# --- the point of it ----------------------------------------------------------------------------------------------


async def test_most_calls_never_reach_the_shared_ledger(counted: tuple[LeasedBudgetLedger, Counting]) -> None:
    ledger, inner = counted
    budget = route("100")  # a lease is 1 % of it: $1, a hundred calls of a cent
    for _ in range(250):
        await spend(ledger, budget)

    assert inner.reserves == 3  # three leases, each reserved once
    assert ledger.stats.local == 250 and ledger.stats.direct == 0
    usage = await ledger.usage(budget)
    assert (usage.spent_usd, usage.reserved_usd, usage.spent_tokens) == (Decimal("2.50"), 0, 250)


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_what_a_lease_spent_reaches_the_shared_ledger_when_it_ends(store_url: str) -> None:
    open_store(store_url).close()
    ledger = LeasedBudgetLedger(SqlBudgetLedger.open(store_url), lease_s=0.05)
    try:
        budget = route("10")
        for _ in range(7):
            await spend(ledger, budget)
        before = await shared_usage(store_url, budget)
        assert (before.spent_usd, before.reserved_usd) == (0, Decimal("0.10"))  # the lease, held whole

        # The lease is renewed after 0.05-0.075 s and reported; its successor, idle, ends a period later.
        for _ in range(250):
            after = await shared_usage(store_url, budget)
            if after.reserved_usd == 0:
                break
            await asyncio.sleep(0.02)
        assert (after.spent_usd, after.reserved_usd, after.spent_tokens) == (Decimal("0.07"), 0, 7)
        # The ledger shows the release before the closing task counts it: give the count a moment to follow.
        for _ in range(100):
            if ledger.stats.closed == 2:
                break
            await asyncio.sleep(0.01)
        assert ledger.stats.leases == ledger.stats.closed == 2
    finally:
        await ledger.aclose()


async def test_a_single_replica_can_spend_its_whole_budget_to_the_cent(
    counted: tuple[LeasedBudgetLedger, Counting],
) -> None:
    ledger, _ = counted
    budget = route("1.02")  # leases of $0.04 leave $0.02: too little to lease
    for _ in range(102):
        await spend(ledger, budget)
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve([budget], usd=CENT, tokens=1)

    assert refused.value.used == pytest.approx(1.02)
    assert ledger.stats.direct == 2  # near the limit, calls went to the shared ledger one by one
    usage = await ledger.usage(budget)
    assert (usage.spent_usd, usage.reserved_usd) == (Decimal("1.02"), 0)


async def test_a_refusal_does_not_count_a_leases_unused_room_as_used(
    counted: tuple[LeasedBudgetLedger, Counting],
) -> None:
    ledger, _ = counted
    budget = route("1")
    in_flight = await ledger.reserve([budget], usd=CENT, tokens=1)  # a lease of $0.04 with a call on it
    for _ in range(49):
        await spend(ledger, budget)

    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve([budget], usd=Decimal("0.60"), tokens=1)

    assert refused.value.used == pytest.approx(0.50)  # 49 spent + 1 in flight; no lease room counted
    assert "$0.5000 of $1.0000 used" in str(refused.value)
    await ledger.settle(in_flight, usd=CENT, tokens=1)


async def test_a_call_larger_than_a_lease_gets_a_lease_its_size(counted: tuple[LeasedBudgetLedger, Counting]) -> None:
    ledger, inner = counted
    budget = route("100")
    reservation = await ledger.reserve([budget], usd=Decimal("3"), tokens=1)  # more than 1 % of the limit
    assert ledger.stats.local == 1 and inner.reserves == 1
    assert (await inner.usage(budget)).reserved_usd == Decimal(12)  # room for four such calls
    await ledger.settle(reservation, usd=Decimal("2.5"), tokens=1)
    assert (await ledger.usage(budget)).spent_usd == Decimal("2.5")


async def test_token_budgets_are_leased_too(counted: tuple[LeasedBudgetLedger, Counting]) -> None:
    ledger, inner = counted
    budget = BudgetScope("key", "ci-bot", BudgetLimit(tokens=10_000))
    for _ in range(20):
        reservation = await ledger.reserve([budget], usd=Decimal(0), tokens=20)
        await ledger.settle(reservation, usd=Decimal("0.001"), tokens=15)

    assert inner.reserves == 4  # leases of 100 tokens (1 % of the limit): six calls of 15 each
    usage = await ledger.usage(budget)
    assert (usage.spent_tokens, usage.reserved_tokens, usage.spent_usd) == (300, 0, Decimal("0.020"))


# --- replicas -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_replicas_with_leases_never_overspend_and_account_to_the_cent(store_url: str) -> None:
    open_store(store_url).close()
    replicas = [LeasedBudgetLedger(SqlBudgetLedger.open(store_url)) for _ in range(3)]
    budget = route("1.00")

    async def call(i: int) -> bool:
        ledger = replicas[i % 3]
        try:
            reservation = await ledger.reserve([budget], usd=CENT, tokens=1)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0.001 * (i % 5))  # calls overlap
        await ledger.settle(reservation, usd=CENT, tokens=1)
        return True

    try:
        granted = sum(await asyncio.gather(*(call(i) for i in range(300))))
    finally:
        for replica in replicas:
            await replica.aclose()

    usage = await shared_usage(store_url, budget)
    assert granted <= 100
    # Near the limit a replica may refuse while another's lease has room; the loss is bounded by the leases.
    assert granted >= 90, granted
    assert (usage.spent_usd, usage.reserved_usd, usage.spent_tokens) == (granted * CENT, 0, granted)


_LEASED_PROCESS = textwrap.dedent(
    """
    import asyncio, sys, time
    from decimal import Decimal
    from pathlib import Path
    from tether.errors import BudgetExceeded
    from tether.gateway.budget import BudgetScope, SqlBudgetLedger
    from tether.config import BudgetLimit
    from tether.gateway.budget.lease import LeasedBudgetLedger

    ready, go, url, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    CENT = Decimal("0.01")

    async def one(ledger, scope):
        try:
            r = await ledger.reserve([scope], usd=CENT, tokens=1)
        except BudgetExceeded:
            return 0
        await asyncio.sleep(0.001)
        await ledger.settle(r, usd=CENT, tokens=1)
        return 1

    async def main() -> None:
        ledger = LeasedBudgetLedger(SqlBudgetLedger.open(url))
        scope = BudgetScope("route", "shared", BudgetLimit(usd=Decimal("1.00")))
        await ledger.usage(scope)
        ready.touch()
        while not go.exists():
            time.sleep(0.001)
        if mode == "crash":
            for _ in range(3):
                await one(ledger, scope)
            print(3, flush=True)
            import os
            os._exit(0)  # no aclose: the lease and what it spent are left behind
        granted = sum(await asyncio.gather(*(one(ledger, scope) for _ in range(150))))
        print(granted)
        await ledger.aclose()

    asyncio.run(main())
    """
)


def _race(url: str, tmp_path: Path, modes: list[str]) -> list[int]:
    go = tmp_path / "go"
    readies = [tmp_path / f"ready-{i}" for i in range(len(modes))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LEASED_PROCESS, str(ready), str(go), url, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready, mode in zip(readies, modes, strict=True)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readies) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * len(modes), [err for _, err in outputs]
    return [int(out) for out, _ in outputs]


def _row(url: str) -> tuple[int, int, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.text("SELECT spent_nanousd, reserved_nanousd, spent_tokens FROM budget_usage WHERE scope = :s"),
                {"s": "route:shared"},
            ).one()
            return int(row[0]), int(row[1]), int(row[2])
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_processes_with_leases_never_overspend_together(store_url: str, tmp_path: Path) -> None:
    open_store(store_url).close()
    granted = _race(store_url, tmp_path, ["race", "race"])

    assert 90 <= sum(granted) <= 100, granted
    assert _row(store_url) == (sum(granted) * 10_000_000, 0, sum(granted))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_replica_that_dies_leaves_its_open_lease_to_be_swept_as_spent(store_url: str, tmp_path: Path) -> None:
    open_store(store_url).close()
    assert _race(store_url, tmp_path, ["crash"]) == [3]

    # Its lease ($0.04) is still reserved and the three cents it spent are not in the budget (they are in the
    # cost ledger). The sweep counts the whole lease as spent: fail closed, never money handed back.
    assert _row(store_url) == (0, 40_000_000, 0)

    async def sweep() -> int:
        ledger = SqlBudgetLedger.open(store_url)
        try:
            return await ledger.sweep_stale(timedelta(0))
        finally:
            await ledger.aclose()

    assert asyncio.run(sweep()) == 1
    assert _row(store_url) == (40_000_000, 0, 0)


# --- in flight, cancelled, failing ------------------------------------------------------------------------------


async def test_a_busy_lease_is_renewed_before_it_ends_so_callers_never_wait(
    counted: tuple[LeasedBudgetLedger, Counting],
) -> None:
    ledger, inner = counted
    ledger.lease_s = 0.05
    budget = route("100")
    await spend(ledger, budget)
    inner.gate = asyncio.Event()  # from the second lease on, the shared ledger answers only when let
    for _ in range(20):  # the lease passes its age while calls keep coming: its successor is asked for...
        await spend(ledger, budget)
        await asyncio.sleep(0.01)
    assert inner.reserves == 2
    inner.gate.set()  # ...and, once granted, takes over; the old lease is reported
    await asyncio.sleep(0.01)
    await spend(ledger, budget)
    assert ledger.stats.leases == 2 and ledger.stats.closed >= 1
    assert (await ledger.usage(budget)).spent_usd == Decimal("0.22")


async def test_a_lease_with_calls_in_flight_is_reported_once_they_settle() -> None:
    inner = Counting()
    ledger = LeasedBudgetLedger(inner, lease_s=0.02, clock=lambda: T0)
    budget = route("10")
    try:
        slow = await ledger.reserve([budget], usd=CENT, tokens=1)
        await spend(ledger, budget)
        await asyncio.sleep(0.1)  # the lease has ended (its idle successor too), but a call is still on it
        usage = await inner.usage(budget)
        assert (usage.spent_usd, usage.reserved_usd) == (0, Decimal("0.10"))

        await ledger.settle(slow, usd=Decimal("0.02"), tokens=3)
        await ledger.flush()
        usage = await inner.usage(budget)
        assert (usage.spent_usd, usage.reserved_usd, usage.spent_tokens) == (Decimal("0.03"), 0, 4)
    finally:
        await ledger.aclose()


async def test_callers_needing_a_lease_at_once_share_one_request(counted: tuple[LeasedBudgetLedger, Counting]) -> None:
    ledger, inner = counted
    inner.gate = asyncio.Event()
    budget = route("100")
    waiting = [asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=1)) for _ in range(50)]
    await asyncio.sleep(0.01)
    inner.gate.set()
    reservations = await asyncio.gather(*waiting)

    assert inner.reserves == 1 and len(reservations) == 50
    assert (await ledger.usage(budget)).reserved_usd == Decimal("0.50")


async def test_a_caller_cancelled_while_a_lease_is_asked_for_leaves_nothing_behind(
    counted: tuple[LeasedBudgetLedger, Counting],
) -> None:
    ledger, inner = counted
    inner.gate = asyncio.Event()
    budget = route("100")
    leaving = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=1))
    staying = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=1))
    await asyncio.sleep(0.01)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    inner.gate.set()
    kept = await staying

    # The lease request went on for the caller that stayed; the one that left holds nothing.
    assert inner.reserves == 1
    assert (await ledger.usage(budget)).reserved_usd == CENT
    await ledger.release(kept)
    assert (await ledger.usage(budget)).reserved_usd == 0


async def test_a_shared_ledger_that_is_down_fails_every_waiting_caller_closed(
    counted: tuple[LeasedBudgetLedger, Counting],
) -> None:
    ledger, inner = counted
    inner.gate = asyncio.Event()
    inner.fail = StoreUnavailable("budget ledger at sqlite:///x: database is down")
    waiting = [asyncio.create_task(ledger.reserve([route("100")], usd=CENT, tokens=1)) for _ in range(5)]
    await asyncio.sleep(0.01)
    inner.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)

    assert all(isinstance(r, StoreUnavailable) for r in results), results
    inner.fail = None
    inner.gate = None
    await spend(ledger, route("100"))  # back up: leases again


async def test_a_settle_that_cannot_be_reported_is_tried_again() -> None:
    class FlakySettle(Counting):
        failures = 2

        async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
            if self.failures:
                self.failures -= 1
                raise StoreUnavailable("database is down")
            await super().settle(reservation, usd=usd, tokens=tokens)

    inner = FlakySettle()
    ledger = LeasedBudgetLedger(inner, clock=lambda: T0)
    await spend(ledger, route("10"))
    await ledger.flush()  # waits through two failures and the backoff between attempts
    assert (await inner.usage(route("10"))).spent_usd == CENT
    await ledger.aclose()


# --- periods, loops, settings ---------------------------------------------------------------------------------


async def test_a_new_period_gets_a_new_lease_and_the_old_one_keeps_its_day() -> None:
    now = [T0.replace(hour=23, minute=59, second=59)]
    inner = MemoryBudgetLedger(clock=lambda: now[0])
    ledger = LeasedBudgetLedger(inner)
    daily = route("10", period="day")
    try:
        await spend(ledger, daily)
        now[0] = T0 + timedelta(days=1)
        await spend(ledger, daily, Decimal("0.02"))
        await ledger.flush()

        assert (await inner.usage(daily, at=T0)).spent_usd == CENT
        assert (await inner.usage(daily)).spent_usd == Decimal("0.02")
        assert (await inner.usage(daily, at=T0)).reserved_usd == 0
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_leases_of_a_finished_event_loop_are_reported_on_the_next(store_url: str) -> None:
    open_store(store_url).close()
    ledger = LeasedBudgetLedger(SqlBudgetLedger.open(store_url))
    budget = route("10")

    asyncio.run(spend(ledger, budget))  # the loop ends with the lease open, never closed

    async def later() -> BudgetUsage:
        await spend(ledger, budget)
        await ledger.flush()
        usage = await shared_usage(store_url, budget)
        await ledger.aclose()
        return usage

    usage = asyncio.run(later())
    assert (usage.spent_usd, usage.reserved_usd, usage.spent_tokens) == (Decimal("0.02"), 0, 2)


async def test_with_leasing_off_every_call_goes_to_the_shared_ledger() -> None:
    inner = Counting()
    ledger = LeasedBudgetLedger(inner, fraction=0)
    reservation = await ledger.reserve([route()], usd=CENT, tokens=1)
    await ledger.release(reservation)
    await spend(ledger, route())
    assert inner.reserves == 2
    assert (await inner.usage(route())).reserved_usd == 0
    await ledger.aclose()


def test_lease_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"between 0 and 0\.25"):
        LeasedBudgetLedger(MemoryBudgetLedger(), fraction=0.5)
    with pytest.raises(ValidationError, match="budget_lease_fraction"):
        GatewayConfig.model_validate({"gateway": {"budget_lease_fraction": 2}})
    with pytest.raises(ValidationError, match="budget_lease_s"):
        GatewayConfig.model_validate({"gateway": {"budget_lease_s": 0}})


async def test_a_closed_ledger_refuses_calls(counted: tuple[LeasedBudgetLedger, Counting]) -> None:
    ledger, _ = counted
    await ledger.aclose()
    with pytest.raises(Exception, match="closed"):
        await ledger.reserve([route()], usd=CENT, tokens=1)
