"""Budgets: reserve/settle/release, atomic across scopes, exact, and never overspent under concurrency.

Every ledger test runs on the memory ledger, on SQLite and on the machine's
PostgreSQL (a schema of its own per test, as in ``tests/store``); the
cross-process tests run on both databases.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from tests.store import conftest as store_fixtures
from tether.config import BudgetLimit
from tether.errors import BudgetExceeded, StoreError, StoreUnavailable
from tether.gateway.budget import BudgetScope, MemoryBudgetLedger, Reservation, SqlBudgetLedger, period_key
from tether.gateway.budget.lease import LeasedBudgetLedger
from tether.store import open_store
from tether.store.engine import create_store_engine
from tether.store.migrations import migrate
from tether.store.url import parse_store_url

# The store tests' fixture: a SQLite file, or a PostgreSQL schema of the test's own, per ``backend``.
store_url = store_fixtures.store_url

Ledger = MemoryBudgetLedger | SqlBudgetLedger | LeasedBudgetLedger

T0 = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
CENT = Decimal("0.01")
SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class Clock:
    """A settable clock for the ledgers."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


LEASED = ["leased-memory", "leased-sqlite", pytest.param("leased-postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=["memory", *SQL_BACKENDS, *LEASED])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(backend: str, clock: Clock, request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    """The backend's ledger on an empty budget; SQL ledgers on a freshly migrated database."""
    made: Ledger
    inner = backend.removeprefix("leased-")
    if inner == "memory":
        made = MemoryBudgetLedger(clock=clock)
    else:
        made = SqlBudgetLedger.open(request.getfixturevalue("store_url"), clock=clock)
    if backend.startswith("leased-"):
        # Every ledger behaviour holds with leases too (each test's budget is small, so they are exercised).
        made = LeasedBudgetLedger(made, clock=clock)
    yield made
    await made.aclose()


def route(
    usd: str | None = "1", tokens: int | None = None, period: str | None = None, name: str = "support"
) -> BudgetScope:
    limit = BudgetLimit.model_validate({"usd": usd, "tokens": tokens, "period": period})
    return BudgetScope("route", name, limit)


def key(usd: str = "1", name: str = "ci-bot") -> BudgetScope:
    return BudgetScope("key", name, BudgetLimit(usd=Decimal(usd)))


async def used(ledger: Ledger, scope: BudgetScope) -> tuple[Decimal, Decimal, int, int]:
    usage = await ledger.usage(scope)
    return usage.spent_usd, usage.reserved_usd, usage.spent_tokens, usage.reserved_tokens


ZERO = (Decimal(0), Decimal(0), 0, 0)


# --- limits and scopes ----------------------------------------------------------------------------------------


def test_a_limit_reads_from_toml_values() -> None:
    limit = BudgetLimit.model_validate({"usd": 50, "tokens": 2_000_000, "period": "day"})
    assert (limit.usd, limit.tokens, limit.period) == (Decimal(50), 2_000_000, "day")
    assert BudgetLimit.model_validate({"usd": 0.1}).usd == Decimal("0.1")  # a TOML float, without binary noise
    assert BudgetLimit(tokens=10).period is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "needs usd, tokens or both"),
        ({"period": "day"}, "needs usd, tokens or both"),
        ({"usd": 0}, "greater than 0"),
        ({"usd": -1}, "greater than 0"),
        ({"tokens": 0}, "greater than 0"),
        ({"usd": "NaN"}, "finite"),
        ({"usd": 1, "period": "week"}, "'day' or 'month'"),
        ({"usd": 1, "per": "day"}, "Extra inputs are not permitted"),
    ],
)
def test_a_malformed_limit_is_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BudgetLimit.model_validate(fields)


def test_limits_are_frozen_and_scopes_are_named_kind_colon_name() -> None:
    limit = BudgetLimit(usd=Decimal(5))
    with pytest.raises(ValidationError):
        limit.usd = Decimal(6)  # type: ignore[misc]
    assert str(BudgetScope("route", "support", limit)) == "route:support"
    assert str(BudgetScope("key", "ci-bot", limit)) == "key:ci-bot"
    assert hash(BudgetScope("agent", "oncall", limit)) == hash(BudgetScope("agent", "oncall", BudgetLimit(usd=5)))
    with pytest.raises(ValueError, match="needs a name"):
        BudgetScope("run", "", limit)


def test_period_keys_are_utc_calendar_days_and_months() -> None:
    assert period_key("day", T0) == "2026-11-21"
    assert period_key("month", T0) == "2026-11"
    assert period_key(None, T0) == "all"
    # 23:30 at UTC-5 on the 21st is already the 22nd in UTC; naive means UTC.
    assert period_key("day", datetime(2026, 11, 21, 23, 30, tzinfo=timezone(timedelta(hours=-5)))) == "2026-11-22"
    assert period_key("day", datetime(2026, 11, 30, 23, 59, 59)) == "2026-11-30"
    assert period_key("month", datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC) + timedelta(seconds=1)) == "2027-01"


# --- reserve, settle, release (memory, SQLite, PostgreSQL) -----------------------------------------------------


async def test_a_reservation_within_the_limits_charges_every_scope(ledger: Ledger) -> None:
    support, bot = route("1"), key("2")

    reservation = await ledger.reserve([support, bot], usd=Decimal("0.25"), tokens=1000)

    assert reservation.scopes == (support, bot)
    assert (reservation.usd, reservation.tokens, reservation.periods) == (Decimal("0.25"), 1000, ("all", "all"))
    assert len(reservation.id) == 32
    for scope in (support, bot):
        assert await used(ledger, scope) == (0, Decimal("0.25"), 0, 1000)
    usage = await ledger.usage(support)
    assert (usage.scope, usage.period, usage.used_usd, usage.used_tokens) == (
        "route:support",
        "all",
        Decimal("0.25"),
        1000,
    )


async def test_a_call_over_the_limit_is_refused_naming_the_scope_and_amounts(ledger: Ledger) -> None:
    support = route("1")
    await ledger.reserve([support], usd=Decimal("0.6"), tokens=0)

    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve([support], usd=Decimal("0.5"), tokens=0)

    error = refused.value
    assert (error.scope, error.limit, error.used, error.requested, error.unit) == (
        "route:support",
        1.0,
        0.6,
        0.5,
        "usd",
    )
    assert "budget route:support exceeded: $0.6000 of $1.0000 used" in str(error)
    assert await used(ledger, support) == (0, Decimal("0.6"), 0, 0)
    # Exactly the rest still fits: the limit is inclusive.
    await ledger.reserve([support], usd=Decimal("0.4"), tokens=0)
    assert (await ledger.usage(support)).used_usd == Decimal(1)


async def test_a_refusal_by_one_scope_charges_none(ledger: Ledger) -> None:
    support, bot = route("10"), key("0.10")
    await ledger.reserve([bot], usd=Decimal("0.05"), tokens=7)

    with pytest.raises(BudgetExceeded, match="key:ci-bot") as refused:
        await ledger.reserve([support, bot], usd=Decimal("0.06"), tokens=5)

    assert (refused.value.used, refused.value.requested) == (0.05, 0.06)
    assert await used(ledger, support) == ZERO
    assert await used(ledger, bot) == (0, Decimal("0.05"), 0, 7)


async def test_the_first_scope_without_room_is_the_one_named(ledger: Ledger) -> None:
    small_route, small_key = route("0.01", name="a"), key("0.01", name="z")
    with pytest.raises(BudgetExceeded, match="key:z"):
        await ledger.reserve([small_key, small_route], usd=CENT * 2, tokens=0)
    with pytest.raises(BudgetExceeded, match="route:a"):
        await ledger.reserve([small_route, small_key], usd=CENT * 2, tokens=0)


async def test_settle_records_the_real_cost_below_or_above_the_reservation(ledger: Ledger) -> None:
    support = route("1")

    cheaper = await ledger.reserve([support], usd=Decimal("0.5"), tokens=4000)
    await ledger.settle(cheaper, usd=Decimal("0.2"), tokens=1500)
    assert await used(ledger, support) == (Decimal("0.2"), 0, 1500, 0)

    dearer = await ledger.reserve([support], usd=Decimal("0.1"), tokens=100)
    await ledger.settle(dearer, usd=Decimal("0.3"), tokens=900)
    assert await used(ledger, support) == (Decimal("0.5"), 0, 2400, 0)

    # Past the limit: recorded as spent, never dropped, and the budget then refuses everything.
    last = await ledger.reserve([support], usd=Decimal("0.5"), tokens=0)
    await ledger.settle(last, usd=Decimal("0.75"), tokens=0)
    assert await used(ledger, support) == (Decimal("1.25"), 0, 2400, 0)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve([support], usd=Decimal("0.000000001"), tokens=0)


async def test_release_frees_the_reservation_once(ledger: Ledger) -> None:
    support, bot = route("1"), key("1")
    reservation = await ledger.reserve([support, bot], usd=Decimal("0.4"), tokens=10)
    kept = await ledger.reserve([support], usd=Decimal("0.1"), tokens=1)

    await ledger.release(reservation)
    await ledger.release(reservation)  # a second release changes nothing

    assert await used(ledger, support) == (0, Decimal("0.1"), 0, 1)
    assert await used(ledger, bot) == ZERO
    await ledger.settle(kept, usd=Decimal("0.1"), tokens=1)
    await ledger.release(kept)  # releasing a settled reservation changes nothing
    assert await used(ledger, support) == (Decimal("0.1"), 0, 1, 0)


async def test_a_token_limit_is_enforced_on_its_own(ledger: Ledger) -> None:
    tokens_only = route(usd=None, tokens=1000)
    await ledger.reserve([tokens_only], usd=Decimal(500), tokens=600)  # no USD limit: any amount

    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve([tokens_only], usd=Decimal(0), tokens=401)

    error = refused.value
    assert (error.scope, error.limit, error.used, error.requested, error.unit) == (
        "route:support",
        1000,
        600,
        401,
        "tokens",
    )
    assert "600 tokens of 1,000 tokens used" in str(error)
    await ledger.reserve([tokens_only], usd=Decimal(0), tokens=400)


async def test_usd_and_token_limits_each_refuse(ledger: Ledger) -> None:
    both = route(usd="1", tokens=1000)
    await ledger.reserve([both], usd=Decimal("0.5"), tokens=900)

    with pytest.raises(BudgetExceeded) as by_tokens:
        await ledger.reserve([both], usd=Decimal("0.1"), tokens=200)
    with pytest.raises(BudgetExceeded) as by_usd:
        await ledger.reserve([both], usd=Decimal("0.6"), tokens=1)

    assert (by_tokens.value.unit, by_usd.value.unit) == ("tokens", "usd")
    assert await used(ledger, both) == (0, Decimal("0.5"), 0, 900)


@pytest.mark.parametrize(
    ("period", "last_moment", "next_start", "key_now", "key_next"),
    [
        (
            "day",
            datetime(2026, 11, 21, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2026, 11, 22, tzinfo=UTC),
            "2026-11-21",
            "2026-11-22",
        ),
        (
            "month",
            datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
            "2026-11",
            "2026-12",
        ),
    ],
)
async def test_a_new_period_starts_with_a_fresh_budget(
    ledger: Ledger,
    clock: Clock,
    period: str,
    last_moment: datetime,
    next_start: datetime,
    key_now: str,
    key_next: str,
) -> None:
    budget = route("1", period=period)
    spent = await ledger.reserve([budget], usd=Decimal(1), tokens=0)
    await ledger.settle(spent, usd=Decimal(1), tokens=0)
    assert spent.periods == (key_now,)

    clock.now = last_moment
    with pytest.raises(BudgetExceeded):
        await ledger.reserve([budget], usd=CENT, tokens=0)

    clock.now = next_start
    fresh = await ledger.reserve([budget], usd=CENT, tokens=0)

    assert fresh.periods == (key_next,)
    assert (await ledger.usage(budget)).period == key_next
    assert await used(ledger, budget) == (0, CENT, 0, 0)
    assert (await ledger.usage(budget, at=T0)).spent_usd == Decimal(1)


async def test_a_lifetime_budget_never_rolls_over(ledger: Ledger, clock: Clock) -> None:
    lifetime = route("1")
    await ledger.settle(await ledger.reserve([lifetime], usd=Decimal(1), tokens=0), usd=Decimal(1), tokens=0)

    clock.advance(timedelta(days=400))

    with pytest.raises(BudgetExceeded):
        await ledger.reserve([lifetime], usd=CENT, tokens=0)
    assert (await ledger.usage(lifetime)).period == "all"


async def test_a_call_settled_after_midnight_is_charged_to_the_day_it_reserved(ledger: Ledger, clock: Clock) -> None:
    daily = route("1", period="day")
    clock.now = T0.replace(hour=23, minute=59)
    reservation = await ledger.reserve([daily], usd=Decimal("0.5"), tokens=10)

    clock.advance(timedelta(minutes=5))
    await ledger.settle(reservation, usd=Decimal("0.3"), tokens=8)

    assert (await ledger.usage(daily, at=T0)).spent_usd == Decimal("0.3")
    assert (await ledger.usage(daily, at=T0)).reserved_usd == 0
    assert await used(ledger, daily) == ZERO


async def test_amounts_are_checked(ledger: Ledger) -> None:
    support = route("1")
    with pytest.raises(ValueError, match=">= 0"):
        await ledger.reserve([support], usd=Decimal("-0.01"), tokens=0)
    with pytest.raises(ValueError, match=">= 0"):
        await ledger.reserve([support], usd=Decimal("Infinity"), tokens=0)
    with pytest.raises(ValueError, match=">= 0"):
        await ledger.reserve([support], usd=Decimal(0), tokens=-1)
    with pytest.raises(ValueError, match="appears twice"):
        await ledger.reserve([support, route("5")], usd=CENT, tokens=0)
    reservation = await ledger.reserve([support], usd=CENT, tokens=0)
    with pytest.raises(ValueError, match=">= 0"):
        await ledger.settle(reservation, usd=Decimal(-1), tokens=0)
    assert await used(ledger, support) == (0, CENT, 0, 0)


async def test_no_scopes_reserve_nothing(ledger: Ledger) -> None:
    reservation = await ledger.reserve([], usd=Decimal(5), tokens=5)
    assert (reservation.scopes, reservation.periods) == ((), ())
    await ledger.settle(reservation, usd=Decimal(5), tokens=5)


# --- exactness ---------------------------------------------------------------------------------------------------


async def test_a_thousand_tiny_reservations_add_up_exactly(ledger: Ledger) -> None:
    support = route("1")
    tiny = Decimal("0.000123")

    reservations = await asyncio.gather(*(ledger.reserve([support], usd=tiny, tokens=1) for _ in range(1000)))
    assert await used(ledger, support) == (0, Decimal("0.123"), 0, 1000)

    await asyncio.gather(*(ledger.settle(r, usd=tiny, tokens=1) for r in reservations))
    assert await used(ledger, support) == (Decimal("0.123"), 0, 1000, 0)


async def test_sub_nano_dollar_amounts_round_towards_refusal(ledger: Ledger) -> None:
    # Money is counted in nano-dollars: amounts round up, limits round down.
    scope = route("0.0000000039")  # 3.9 nano-dollars: 3 usable
    await ledger.reserve([scope], usd=Decimal("0.0000000011"), tokens=0)  # takes 2
    with pytest.raises(BudgetExceeded):
        await ledger.reserve([scope], usd=Decimal("0.0000000011"), tokens=0)
    await ledger.reserve([scope], usd=Decimal("0.000000001"), tokens=0)
    assert (await ledger.usage(scope)).reserved_usd == Decimal("0.000000003")


# --- concurrency --------------------------------------------------------------------------------------------------


async def reserve_many(ledgers: list[Ledger], scope: BudgetScope, times: int) -> list[Reservation]:
    """``times`` concurrent reservations of a cent, spread over ``ledgers``; the ones granted."""
    results = await asyncio.gather(
        *(ledgers[i % len(ledgers)].reserve([scope], usd=CENT, tokens=1) for i in range(times)),
        return_exceptions=True,
    )
    unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, BudgetExceeded)]
    assert not unexpected, unexpected
    return [r for r in results if isinstance(r, Reservation)]


async def watch_peak(ledger: Ledger, scope: BudgetScope, stop: asyncio.Event) -> Decimal:
    """The most ever seen used (spent + reserved) until ``stop`` is set."""
    peak = Decimal(0)
    while not stop.is_set():
        peak = max(peak, (await ledger.usage(scope)).used_usd)
        await asyncio.sleep(0)
    return max(peak, (await ledger.usage(scope)).used_usd)


async def test_a_hundred_concurrent_reservations_never_overspend(ledger: Ledger) -> None:
    budget = route("0.50")
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_peak(ledger, budget, stop))

    granted = await reserve_many([ledger], budget, 100)
    stop.set()

    assert len(granted) == 50
    assert await watcher <= Decimal("0.50")
    assert await used(ledger, budget) == (0, Decimal("0.50"), 0, 50)
    await asyncio.gather(*(ledger.settle(r, usd=CENT, tokens=1) for r in granted))
    assert await used(ledger, budget) == (Decimal("0.50"), 0, 50, 0)


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_replicas_sharing_a_database_share_one_budget(store_url: str, clock: Clock) -> None:
    replicas = [SqlBudgetLedger.open(store_url, clock=clock) for _ in range(3)]
    try:
        budget = route("0.50")
        granted = await reserve_many(list(replicas), budget, 100)

        assert len(granted) == 50
        assert await used(replicas[0], budget) == (0, Decimal("0.50"), 0, 50)
    finally:
        for replica in replicas:
            await replica.aclose()


_RESERVE_WHEN_TOLD = textwrap.dedent(
    """
    import asyncio, sys, time
    from decimal import Decimal
    from pathlib import Path
    from tether.errors import BudgetExceeded
    from tether.gateway.budget import BudgetScope, SqlBudgetLedger
    from tether.config import BudgetLimit

    ready, go, url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    async def main() -> None:
        ledger = SqlBudgetLedger.open(url)
        scope = BudgetScope("route", "shared", BudgetLimit(usd=Decimal("1.00")))
        await ledger.usage(scope)  # connected and its worker thread started before the race
        ready.touch()
        while not go.exists():
            time.sleep(0.001)
        results = await asyncio.gather(
            *(ledger.reserve([scope], usd=Decimal("0.01"), tokens=0) for _ in range(150)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, BudgetExceeded):
                raise result
        granted = [r for r in results if not isinstance(r, BaseException)]
        await asyncio.gather(*(ledger.settle(r, usd=Decimal("0.01"), tokens=0) for r in granted))
        print(len(granted))
        await ledger.aclose()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_processes_sharing_a_database_never_overspend_together(store_url: str, tmp_path: Path) -> None:
    open_store(store_url).close()  # migrated before the race, as a deployment would be
    go = tmp_path / "go"
    readies = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RESERVE_WHEN_TOLD, str(ready), str(go), store_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready in readies
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

    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    granted = [int(out) for out, _ in outputs]
    assert sum(granted) == 100, granted
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.text("SELECT spent_nanousd, reserved_nanousd FROM budget_usage WHERE scope = 'route:shared'")
            ).one()
            assert tuple(row) == (1_000_000_000, 0)
            assert connection.execute(sa.text("SELECT count(*) FROM budget_reservations")).scalar_one() == 0
    finally:
        engine.dispose()


# --- stale reservations and failure ---------------------------------------------------------------------------


async def test_the_sweep_counts_only_stale_reservations_as_spent(ledger: Ledger, clock: Clock) -> None:
    support, bot = route("1"), key("1")
    orphan = await ledger.reserve([support, bot], usd=Decimal("0.3"), tokens=30)
    clock.advance(timedelta(minutes=10))
    recent = await ledger.reserve([support], usd=Decimal("0.2"), tokens=20)
    clock.advance(timedelta(minutes=2))

    assert await ledger.sweep_stale(timedelta(minutes=5)) == 1

    # Fail closed: a dead replica's call may have been billed, so its whole reservation counts as spent.
    assert await used(ledger, support) == (Decimal("0.3"), Decimal("0.2"), 30, 20)
    assert await used(ledger, bot) == (Decimal("0.3"), 0, 30, 0)
    assert await ledger.sweep_stale(timedelta(minutes=5)) == 0
    # A call that outlived the sweep is still charged in full, on top (counted twice: the safe side);
    # its reservation is not taken twice.
    await ledger.settle(orphan, usd=Decimal("0.25"), tokens=25)
    assert await used(ledger, support) == (Decimal("0.55"), Decimal("0.2"), 55, 20)
    assert await used(ledger, bot) == (Decimal("0.55"), 0, 55, 0)
    await ledger.release(recent)
    assert await used(ledger, support) == (Decimal("0.55"), 0, 55, 0)


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_reserve_cancelled_mid_transaction_leaves_nothing_reserved(store_url: str, clock: Clock) -> None:
    budget = route("1")
    ledger = SqlBudgetLedger.open(store_url, clock=clock)
    for _ in range(5):
        task = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=1))
        await asyncio.sleep(0)  # the worker thread has started its transaction
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await ledger.aclose()  # waits for the transactions to end and their charges to be given back

    reader = SqlBudgetLedger.open(store_url, clock=clock)
    try:
        assert await used(reader, budget) == (0, 0, 0, 0)
        assert await reader.sweep_stale(timedelta(0)) == 0
    finally:
        await reader.aclose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_ledger_can_share_the_trace_store_or_an_engine(store_url: str) -> None:
    budget = route("1")
    with open_store(store_url) as store:
        on_store = SqlBudgetLedger(store)
        await on_store.reserve([budget], usd=CENT, tokens=0)
        await on_store.aclose()
        assert store.list_runs() == []  # the store's engine is still usable

    engine = create_store_engine(parse_store_url(store_url))
    try:
        migrate(engine)
        on_engine = SqlBudgetLedger(engine)
        assert (await on_engine.usage(budget)).reserved_usd == CENT
        await on_engine.aclose()
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM budget_reservations")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_closed_ledger_refuses_to_reserve(store_url: str) -> None:
    ledger = SqlBudgetLedger.open(store_url)
    await ledger.aclose()
    with pytest.raises(StoreError, match="closed"):
        await ledger.reserve([route("1")], usd=CENT, tokens=0)


async def test_an_unreachable_database_fails_closed() -> None:
    engine = create_store_engine(parse_store_url("postgresql+psycopg://postgres@127.0.0.1:1/test"))
    ledger = SqlBudgetLedger(engine)
    try:
        with pytest.raises(StoreUnavailable, match="cannot reach PostgreSQL"):
            await ledger.reserve([route("1")], usd=CENT, tokens=0)
    finally:
        await ledger.aclose()
        engine.dispose()


async def test_an_in_memory_sqlite_ledger_is_safe_under_concurrency() -> None:
    engine = create_store_engine(parse_store_url("sqlite://"))
    try:
        migrate(engine)
        ledger = SqlBudgetLedger(engine)
        budget = route("0.50")
        assert len(await reserve_many([ledger], budget, 100)) == 50
        await ledger.aclose()
    finally:
        engine.dispose()


# --- group commit (SQLite, PostgreSQL) ------------------------------------------------------------------------


class Batches:
    """Records the size of every batch a SQL ledger runs, and can hold its worker thread at a batch's start."""

    def __init__(self, ledger: SqlBudgetLedger) -> None:
        self.sizes: list[int] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        run_batch = ledger._run_batch

        def recorded(ops: list[object]) -> object:
            self.sizes.append(len(ops))
            self.started.set()
            assert self.gate.wait(timeout=30), "the test never opened the gate"
            return run_batch(ops)  # type: ignore[arg-type]

        ledger._run_batch = recorded  # type: ignore[method-assign,assignment]

    async def running(self) -> None:
        """Wait until a batch has started (and is held, if the gate is closed)."""
        assert await asyncio.to_thread(self.started.wait, 30)
        self.started.clear()


async def held_reservations(ledger: SqlBudgetLedger) -> int:
    """How many reservations are open in the database: the sweep, with no age limit, counts them as it frees them."""
    return await ledger.sweep_stale(timedelta(0))


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_refusal_inside_a_batch_leaves_the_others_of_the_batch_alone(store_url: str, clock: Clock) -> None:
    ledger = SqlBudgetLedger.open(store_url, clock=clock)
    batches = Batches(ledger)
    budget = route("0.10", tokens=100)
    try:
        results = await asyncio.gather(
            ledger.release(Reservation("0" * 32, (), Decimal(0), 0, ())),  # occupies the first transaction
            ledger.reserve([budget], usd=Decimal("0.06"), tokens=10),
            ledger.reserve([budget], usd=Decimal("0.05"), tokens=10),  # 0.06 + 0.05 > 0.10
            ledger.reserve([budget], usd=Decimal("0.04"), tokens=90),  # exactly the rest: fits
            return_exceptions=True,
        )

        assert batches.sizes == [1, 3]  # the three reservations shared one transaction
        first, second, third = results[1:]
        assert isinstance(first, Reservation) and isinstance(third, Reservation)
        assert isinstance(second, BudgetExceeded)
        assert (second.scope, second.used, second.requested, second.unit) == ("route:support", 0.06, 0.05, "usd")
        assert await used(ledger, budget) == (0, Decimal("0.10"), 0, 100)
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([budget], usd=Decimal(0), tokens=1)
        await ledger.settle(first, usd=Decimal("0.05"), tokens=7)
        await ledger.release(third)
        assert await used(ledger, budget) == (Decimal("0.05"), 0, 7, 0)
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_batch_applies_its_operations_in_arrival_order(store_url: str, clock: Clock) -> None:
    ledger = SqlBudgetLedger.open(store_url, clock=clock)
    batches = Batches(ledger)
    budget = route("1")
    try:
        big = await ledger.reserve([budget], usd=Decimal("0.90"), tokens=0)
        small = await ledger.reserve([budget], usd=Decimal("0.05"), tokens=0)
        assert batches.sizes == [1, 1]  # a lone caller finds the ledger idle and goes at once

        batches.gate.clear()
        blocker = asyncio.create_task(ledger.release(Reservation("0" * 32, (), Decimal(0), 0, ())))
        await batches.running()
        # All five wait for the next transaction, which applies them in this order.
        results = asyncio.gather(
            ledger.settle(big, usd=Decimal("0.30"), tokens=0),  # frees 0.60: 0.35 used
            ledger.reserve([budget], usd=Decimal("0.60"), tokens=0),  # fits only after the settle: 0.95
            ledger.reserve([budget], usd=Decimal("0.10"), tokens=0),  # no room: refused
            ledger.release(small),  # frees 0.05: 0.90
            ledger.reserve([budget], usd=Decimal("0.10"), tokens=0),  # fits only after the release: 1.00
            return_exceptions=True,
        )
        await asyncio.sleep(0)
        batches.gate.set()
        await blocker
        settled, granted, refused, released, last = await results

        assert batches.sizes == [1, 1, 1, 5]
        assert settled is None and released is None
        assert isinstance(granted, Reservation) and isinstance(last, Reservation)
        assert isinstance(refused, BudgetExceeded) and refused.used == 0.95
        assert await used(ledger, budget) == (Decimal("0.30"), Decimal("0.70"), 0, 0)
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_500_concurrent_pairs_on_room_for_200_grant_exactly_200(store_url: str, clock: Clock) -> None:
    ledger = SqlBudgetLedger.open(store_url, clock=clock)
    budget, bot = route("2.00"), key("100")

    async def pair(i: int) -> int | None:
        """Reserve a cent and settle it (the tokens vary); the tokens settled, or None if refused."""
        try:
            reservation = await ledger.reserve([budget, bot], usd=CENT, tokens=10)
        except BudgetExceeded:
            return None
        await asyncio.sleep(0)
        await ledger.settle(reservation, usd=CENT, tokens=i % 7)
        return i % 7

    try:
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_peak(ledger, budget, stop))
        settled = [t for t in await asyncio.gather(*(pair(i) for i in range(500))) if t is not None]
        stop.set()

        assert len(settled) == 200
        assert await watcher <= Decimal("2.00")
        assert await used(ledger, budget) == (Decimal("2.00"), 0, sum(settled), 0)
        assert await used(ledger, bot) == (Decimal("2.00"), 0, sum(settled), 0)
        assert ledger.operations == 500 + 200
        assert ledger.transactions <= ledger.operations // 20, (ledger.transactions, ledger.operations)
        assert await held_reservations(ledger) == 0
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_concurrent_callers_share_few_transactions(store_url: str, clock: Clock) -> None:
    ledger = SqlBudgetLedger.open(store_url, clock=clock)
    try:
        reservations = await reserve_many([ledger], route("10"), 300)
        assert (len(reservations), ledger.operations) == (300, 300)
        # The first caller finds the ledger idle and goes at once; the rest queue behind it.
        assert ledger.transactions <= 5, ledger.transactions
        await asyncio.gather(*(ledger.settle(r, usd=CENT, tokens=1) for r in reservations))
        assert ledger.operations == 600
        assert ledger.transactions <= 10, ledger.transactions
        assert await used(ledger, route("10")) == (Decimal(3), 0, 300, 0)
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_batches_and_the_queue_are_bounded(store_url: str, clock: Clock) -> None:
    ledger = SqlBudgetLedger.open(store_url, clock=clock, max_batch=16, max_queue=40)
    batches = Batches(ledger)
    budget = route("10")
    loop = asyncio.get_running_loop()
    longest = 0
    stop = asyncio.Event()

    async def watch_queue() -> None:
        nonlocal longest
        while not stop.is_set():
            lane = ledger._lanes.get(loop)
            longest = max(longest, len(lane.queue) if lane is not None else 0)
            await asyncio.sleep(0)

    try:
        watcher = asyncio.create_task(watch_queue())
        granted = await reserve_many([ledger], budget, 200)
        stop.set()
        await watcher

        assert len(granted) == 200
        assert sum(batches.sizes) == 200 and max(batches.sizes) <= 16 and len(batches.sizes) >= 200 // 16
        assert 0 < longest <= 40  # the other callers waited for room
        assert await used(ledger, budget) == (0, Decimal(2), 0, 200)
    finally:
        await ledger.aclose()
    with pytest.raises(ValueError, match="max_batch"):
        SqlBudgetLedger.open(store_url, max_batch=0)


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_caller_waiting_for_room_in_the_queue_can_leave(store_url: str, clock: Clock) -> None:
    ledger = SqlBudgetLedger.open(store_url, clock=clock, max_queue=2)
    batches = Batches(ledger)
    budget = route("1")
    try:
        batches.gate.clear()
        first = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=0))
        await batches.running()
        queued = [asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=0)) for _ in range(2)]
        waiting = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=0))
        last = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=0))
        await asyncio.sleep(0)
        assert len(ledger._lanes[asyncio.get_running_loop()].queue) == 2  # the other two wait for room
        waiting.cancel()
        batches.gate.set()

        for task in (first, *queued, last):
            assert isinstance(await task, Reservation)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert batches.sizes == [1, 2, 1]
        assert await used(ledger, budget) == (0, CENT * 4, 0, 0)
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_cancelling_callers_of_a_running_or_queued_batch(store_url: str, clock: Clock) -> None:
    budget = route("1")
    ledger = SqlBudgetLedger.open(store_url, clock=clock)
    batches = Batches(ledger)
    to_settle = await ledger.reserve([budget], usd=Decimal("0.2"), tokens=20)

    batches.gate.clear()
    running = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=1))
    await batches.running()  # its transaction is under way in the worker thread
    queued = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=1))
    settling = asyncio.create_task(ledger.settle(to_settle, usd=Decimal("0.15"), tokens=15))
    await asyncio.sleep(0)  # both queued behind the running batch
    for task in (running, queued, settling):
        task.cancel()
    batches.gate.set()
    for task in (running, queued, settling):
        with pytest.raises(asyncio.CancelledError):
            await task
    await ledger.aclose()  # waits for the running batch, the settle, and the release of the orphan

    # The running reservation committed and was given back; the queued one never ran; the settle stood.
    assert batches.sizes[1:] == [1, 2]  # the orphan's reservation; the settle with the orphan's release
    reader = SqlBudgetLedger.open(store_url, clock=clock)
    try:
        assert await used(reader, budget) == (Decimal("0.15"), 0, 15, 0)
        assert await held_reservations(reader) == 0
    finally:
        await reader.aclose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_database_error_fails_the_whole_batch_and_the_next_batch_works(store_url: str, clock: Clock) -> None:
    engine = create_store_engine(parse_store_url(store_url))
    migrate(engine)
    sabotage = {"armed": False}

    @sa.event.listens_for(engine, "before_cursor_execute", retval=True)
    def break_the_insert(
        conn: object, cursor: object, statement: str, parameters: object, context: object, executemany: bool
    ) -> tuple[str, object]:
        # A real database error mid-transaction: after the batch's locks and updates, at its last statement.
        if sabotage["armed"] and statement.startswith("INSERT INTO budget_reservations"):
            sabotage["armed"] = False
            statement = statement.replace("budget_reservations", "no_such_table", 1)
        return statement, parameters

    ledger = SqlBudgetLedger(engine, clock=clock)
    batches = Batches(ledger)
    budget = route("1")
    try:
        before = await ledger.reserve([budget], usd=Decimal("0.1"), tokens=10)
        sabotage["armed"] = True
        results = await asyncio.gather(
            ledger.release(Reservation("0" * 32, (), Decimal(0), 0, ())),  # occupies the first transaction
            ledger.reserve([budget], usd=CENT, tokens=1),
            ledger.settle(before, usd=Decimal("0.05"), tokens=5),
            ledger.reserve([budget], usd=Decimal(5), tokens=1),  # would be refused: fails like the others
            return_exceptions=True,
        )

        assert batches.sizes == [1, 1, 3]
        errors = results[1:]
        assert all(type(e) is StoreError for e in errors), errors
        assert len({id(e) for e in errors}) == 3  # each caller raises an exception of its own
        assert all("updating budgets failed" in str(e) and "no_such_table" in str(e) for e in errors)
        # Nothing of the failed batch stuck: the settle's reservation is still held, nothing was added.
        assert await used(ledger, budget) == (0, Decimal("0.1"), 0, 10)

        again = await ledger.reserve([budget], usd=CENT, tokens=1)
        await ledger.settle(before, usd=Decimal("0.05"), tokens=5)
        await ledger.settle(again, usd=CENT, tokens=1)
        assert await used(ledger, budget) == (Decimal("0.06"), 0, 6, 0)
        assert await held_reservations(ledger) == 0
    finally:
        await ledger.aclose()
        engine.dispose()


async def test_an_unreachable_database_fails_every_caller_of_the_batch_closed() -> None:
    engine = create_store_engine(parse_store_url("postgresql+psycopg://postgres@127.0.0.1:1/test"))
    ledger = SqlBudgetLedger(engine)
    try:
        results = await asyncio.gather(
            *(ledger.reserve([route("1")], usd=CENT, tokens=0) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) and "cannot reach PostgreSQL" in str(r) for r in results), results
        assert len({id(r) for r in results}) == 5
        assert ledger.transactions == 0  # no connection, no transaction
    finally:
        await ledger.aclose()
        engine.dispose()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
def test_a_ledger_serves_one_event_loop_after_another(store_url: str) -> None:
    ledger = SqlBudgetLedger.open(store_url)
    budget = route("1")

    async def pair() -> None:
        reservation, refused = await asyncio.gather(
            ledger.reserve([budget], usd=Decimal("0.3"), tokens=3),
            ledger.reserve([budget], usd=Decimal(2), tokens=0),
            return_exceptions=True,
        )
        assert isinstance(reservation, Reservation) and isinstance(refused, BudgetExceeded)
        await ledger.settle(reservation, usd=Decimal("0.2"), tokens=2)

    async def close() -> tuple[Decimal, Decimal, int, int]:
        usage = await used(ledger, budget)
        await ledger.aclose()
        return usage

    asyncio.run(pair())
    asyncio.run(pair())  # a new loop, as two Agent.run_sync calls make
    assert asyncio.run(close()) == (Decimal("0.4"), 0, 4, 0)


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_large_sweep_goes_in_batches(store_url: str, clock: Clock) -> None:
    ledger = SqlBudgetLedger.open(store_url, clock=clock, max_batch=32)
    batches = Batches(ledger)
    budget, bot = route("10"), key("10")
    try:
        await asyncio.gather(*(ledger.reserve([budget, bot], usd=CENT, tokens=1) for _ in range(100)))
        clock.advance(timedelta(hours=1))
        batches.sizes.clear()

        assert await ledger.sweep_stale(timedelta(minutes=5)) == 100

        assert sum(batches.sizes) == 100 and max(batches.sizes) <= 32
        assert await used(ledger, budget) == (Decimal("1"), 0, 100, 0)  # swept as spent: fail closed
        assert await used(ledger, bot) == (Decimal("1"), 0, 100, 0)
    finally:
        await ledger.aclose()
