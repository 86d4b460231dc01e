"""The Redis budget ledger: the same behaviour as the other ledgers, shared by replicas and processes.

The behaviour tests of ``test_budget.py`` are imported below and run here on
the Redis ledger: pytest collects them in this module, so they take this
module's ``ledger`` fixture. The tests after them cover what only Redis has:
keys and expiry, exactness past 2^53, several clients and processes, failures.
Every test uses the machine's Redis under a prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
import redis.asyncio

from tests.gateway import test_budget as shared
from tests.gateway.test_budget import CENT, T0, ZERO, Clock, reserve_many, route, used, watch_peak
from tether.errors import BudgetExceeded, ConfigError, StoreError, StoreUnavailable
from tether.gateway.budget import Reservation
from tether.gateway.budget.redis import RedisBudgetLedger

# --- the behaviour every ledger shares ------------------------------------------------------------------------

test_a_reservation_within_the_limits_charges_every_scope = (
    shared.test_a_reservation_within_the_limits_charges_every_scope
)
test_a_call_over_the_limit_is_refused_naming_the_scope_and_amounts = (
    shared.test_a_call_over_the_limit_is_refused_naming_the_scope_and_amounts
)
test_a_refusal_by_one_scope_charges_none = shared.test_a_refusal_by_one_scope_charges_none
test_the_first_scope_without_room_is_the_one_named = shared.test_the_first_scope_without_room_is_the_one_named
test_settle_records_the_real_cost_below_or_above_the_reservation = (
    shared.test_settle_records_the_real_cost_below_or_above_the_reservation
)
test_release_frees_the_reservation_once = shared.test_release_frees_the_reservation_once
test_a_token_limit_is_enforced_on_its_own = shared.test_a_token_limit_is_enforced_on_its_own
test_usd_and_token_limits_each_refuse = shared.test_usd_and_token_limits_each_refuse
test_a_new_period_starts_with_a_fresh_budget = shared.test_a_new_period_starts_with_a_fresh_budget
test_a_lifetime_budget_never_rolls_over = shared.test_a_lifetime_budget_never_rolls_over
test_a_call_settled_after_midnight_is_charged_to_the_day_it_reserved = (
    shared.test_a_call_settled_after_midnight_is_charged_to_the_day_it_reserved
)
test_amounts_are_checked = shared.test_amounts_are_checked
test_no_scopes_reserve_nothing = shared.test_no_scopes_reserve_nothing
test_a_thousand_tiny_reservations_add_up_exactly = shared.test_a_thousand_tiny_reservations_add_up_exactly
test_sub_nano_dollar_amounts_round_towards_refusal = shared.test_sub_nano_dollar_amounts_round_towards_refusal
test_a_hundred_concurrent_reservations_never_overspend = shared.test_a_hundred_concurrent_reservations_never_overspend
test_the_sweep_counts_only_stale_reservations_as_spent = shared.test_the_sweep_counts_only_stale_reservations_as_spent


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(redis_url: str, redis_prefix: str, clock: Clock) -> AsyncIterator[RedisBudgetLedger]:
    """A Redis ledger on an empty budget: the test's own prefix, on the shared test clock."""
    made = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=redis_prefix, clock=clock)
    yield made
    await made.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client, to look at what the ledger wrote."""
    made = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield made
    await made.aclose()


def ms_until(moment: datetime, now: datetime) -> int:
    return math.ceil((moment - now) / timedelta(milliseconds=1))


# --- keys, integers and expiry --------------------------------------------------------------------------------


async def test_counters_are_integer_nanodollars_under_documented_keys(
    ledger: RedisBudgetLedger, client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    support = route("1")
    reservation = await ledger.reserve([support], usd=Decimal("0.000123"), tokens=7)

    held = await client.hgetall(f"{redis_prefix}reservation:{reservation.id}")
    assert held == {
        "nanousd": "123000",
        "tokens": "7",
        "created_us": str((T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)),
        "n": "1",
        "1": f"{redis_prefix}usage:all:route:support",
    }
    assert await client.zrange(f"{redis_prefix}reservations", 0, -1) == [reservation.id]

    await ledger.settle(reservation, usd=Decimal("0.0001"), tokens=5)

    assert await client.hgetall(f"{redis_prefix}usage:all:route:support") == {
        "spent_nanousd": "100000",
        "reserved_nanousd": "0",
        "spent_tokens": "5",
        "reserved_tokens": "0",
        # The counters were built in the ledger's epoch (they are rebuilt if Redis loses the marker).
        "epoch": await client.get(f"{redis_prefix}epoch"),
    }
    assert await client.exists(f"{redis_prefix}reservation:{reservation.id}") == 0
    assert await client.zcard(f"{redis_prefix}reservations") == 0


@pytest.mark.parametrize(
    ("period", "key", "ends"),
    [
        ("day", "2026-11-21", datetime(2026, 11, 22, tzinfo=UTC)),
        ("month", "2026-11", datetime(2026, 12, 1, tzinfo=UTC)),
    ],
)
async def test_a_periods_counters_expire_a_retention_after_it_ends_and_lifetime_ones_never(
    ledger: RedisBudgetLedger, client: redis.asyncio.Redis, redis_prefix: str, period: str, key: str, ends: datetime
) -> None:
    periodic, lifetime = route("1", period=period), route("1", name="forever")

    only_periodic = await ledger.reserve([periodic], usd=CENT, tokens=1)
    both = await ledger.reserve([periodic, lifetime], usd=CENT, tokens=1)

    expected = ms_until(ends + timedelta(days=32), T0)
    assert expected - 5_000 < await client.pttl(f"{redis_prefix}usage:{key}:route:support") <= expected
    assert await client.pttl(f"{redis_prefix}usage:all:route:forever") == -1
    # A reservation lives as long as the counters it holds: on a lifetime budget, until settled or swept.
    assert expected - 5_000 < await client.pttl(f"{redis_prefix}reservation:{only_periodic.id}") <= expected
    assert await client.pttl(f"{redis_prefix}reservation:{both.id}") == -1

    await ledger.settle(both, usd=CENT, tokens=1)
    assert await client.pttl(f"{redis_prefix}usage:all:route:forever") == -1


async def test_periods_and_expiry_follow_the_callers_clock_not_redis(
    ledger: RedisBudgetLedger, clock: Clock, client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    # Decades before Redis's own clock: an absolute expiry (EXPIREAT) would delete the counters at once.
    clock.now = datetime(2001, 2, 3, 12, 0, tzinfo=UTC)
    daily = route("1", period="day")

    reservation = await ledger.reserve([daily], usd=CENT, tokens=0)

    assert reservation.periods == ("2001-02-03",)
    expected = ms_until(datetime(2001, 2, 4, tzinfo=UTC) + timedelta(days=32), clock.now)
    assert expected - 5_000 < await client.pttl(f"{redis_prefix}usage:2001-02-03:route:support") <= expected
    assert await used(ledger, daily) == (0, CENT, 0, 0)


async def test_a_shorter_retention_shortens_the_expiry(
    redis_url: str, redis_prefix: str, clock: Clock, client: redis.asyncio.Redis
) -> None:
    ledger = RedisBudgetLedger(
        redis_url, persistence_verified=True, prefix=redis_prefix, clock=clock, retention=timedelta(hours=1)
    )
    try:
        await ledger.reserve([route("1", period="day")], usd=CENT, tokens=0)
    finally:
        await ledger.aclose()

    expected = ms_until(datetime(2026, 11, 22, 1, tzinfo=UTC), T0)
    assert expected - 5_000 < await client.pttl(f"{redis_prefix}usage:2026-11-21:route:support") <= expected


# --- exactness and limits of 64-bit counters --------------------------------------------------------------------


async def test_amounts_past_2_to_the_53_nanodollars_are_exact(ledger: RedisBudgetLedger) -> None:
    # $1e9 is 1e18 nano-dollars: far beyond what a Lua number (a double) holds exactly.
    huge = route("1000000000", tokens=10**15)
    one_nano = Decimal("0.000000001")
    await ledger.reserve([huge], usd=Decimal("999999999.999999998"), tokens=10**15 - 2)

    await ledger.reserve([huge], usd=one_nano, tokens=1)
    with pytest.raises(BudgetExceeded) as by_tokens:
        await ledger.reserve([huge], usd=Decimal(0), tokens=2)
    await ledger.reserve([huge], usd=one_nano, tokens=0)
    with pytest.raises(BudgetExceeded) as by_usd:
        await ledger.reserve([huge], usd=one_nano, tokens=0)

    assert (by_tokens.value.unit, by_tokens.value.used, by_tokens.value.limit) == ("tokens", 10**15 - 1, 10**15)
    assert by_usd.value.unit == "usd"
    assert await used(ledger, huge) == (0, Decimal(1_000_000_000), 0, 10**15 - 1)


async def test_a_counter_that_would_pass_64_bits_refuses_and_charges_nothing(ledger: RedisBudgetLedger) -> None:
    tokens_only = route(usd=None, tokens=10)  # no USD limit: only the counter's width stops USD
    first = await ledger.reserve([tokens_only], usd=Decimal(9_000_000_000), tokens=1)  # 9e18 nano-dollars

    with pytest.raises(StoreError, match="64 bits"):
        await ledger.reserve([tokens_only], usd=Decimal(1_000_000_000), tokens=1)
    with pytest.raises(StoreError, match="64 bits"):
        await ledger.reserve([tokens_only], usd=Decimal(10) ** 12, tokens=1)  # too wide for one call
    assert await used(ledger, tokens_only) == (0, Decimal(9_000_000_000), 0, 1)

    await ledger.settle(first, usd=Decimal(9_000_000_000), tokens=1)
    second = await ledger.reserve([tokens_only], usd=CENT, tokens=1)
    with pytest.raises(StoreError, match="64 bits"):
        await ledger.settle(second, usd=Decimal(1_000_000_000), tokens=1)
    assert await used(ledger, tokens_only) == (Decimal(9_000_000_000), CENT, 1, 1)  # the reservation still held


# --- many clients, many processes -------------------------------------------------------------------------------


async def test_replicas_sharing_a_redis_share_one_budget(redis_url: str, redis_prefix: str, clock: Clock) -> None:
    replicas = [
        RedisBudgetLedger(redis_url, persistence_verified=True, prefix=redis_prefix, clock=clock) for _ in range(3)
    ]
    try:
        budget = route("0.50")
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_peak(replicas[0], budget, stop))

        granted = await reserve_many(list(replicas), budget, 100)
        stop.set()

        assert len(granted) == 50
        assert await watcher <= Decimal("0.50")
        assert await used(replicas[1], budget) == (0, Decimal("0.50"), 0, 50)
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_ledgers_with_other_prefixes_keep_other_budgets(redis_url: str, redis_prefix: str) -> None:
    one = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=f"{redis_prefix}one:")
    two = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=f"{redis_prefix}two:")
    try:
        budget = route("0.01")
        await one.reserve([budget], usd=CENT, tokens=0)
        await two.reserve([budget], usd=CENT, tokens=0)
        with pytest.raises(BudgetExceeded):
            await one.reserve([budget], usd=CENT, tokens=0)
    finally:
        await one.aclose()
        await two.aclose()


# Runs in a separate interpreter: connects and loads the scripts, says "ready", waits for the start
# line on stdin so both processes race at the same moment, then prints how many cents it was granted.
_RESERVE_WHEN_TOLD = textwrap.dedent(
    """
    import asyncio, sys
    from decimal import Decimal
    from tether.errors import BudgetExceeded
    from tether.gateway.budget import BudgetScope
    from tether.config import BudgetLimit
    from tether.gateway.budget.redis import RedisBudgetLedger

    async def main(url: str, prefix: str) -> None:
        ledger = RedisBudgetLedger(url, persistence_verified=True, prefix=prefix)
        scope = BudgetScope("route", "shared", BudgetLimit(usd=Decimal("1.00")))
        warm_up = await ledger.reserve([scope], usd=Decimal(0), tokens=0)
        await ledger.release(warm_up)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(
            *(ledger.reserve([scope], usd=Decimal("0.01"), tokens=0) for _ in range(150)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, BudgetExceeded):
                raise result
        granted = [r for r in results if not isinstance(r, BaseException)]
        await asyncio.gather(*(ledger.settle(r, usd=Decimal("0.01"), tokens=0) for r in granted))
        print(len(granted), flush=True)
        await ledger.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_processes_sharing_a_redis_never_overspend_together(redis_url: str, redis_prefix: str) -> None:
    args = [sys.executable, "-c", _RESERVE_WHEN_TOLD, redis_url, redis_prefix]
    processes = [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready", process.stderr and process.stderr.read()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    granted = [int(out) for out, _ in outputs]
    assert sum(granted) == 100, granted
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert client.hgetall(f"{redis_prefix}usage:all:route:shared") == {
            "spent_nanousd": "1000000000",
            "reserved_nanousd": "0",
            "spent_tokens": "0",
            "reserved_tokens": "0",
            "epoch": client.get(f"{redis_prefix}epoch"),
        }
        assert client.zcard(f"{redis_prefix}reservations") == 0
        assert list(client.scan_iter(match=f"{redis_prefix}reservation:*")) == []


# --- the sweep, retries and cancellation ------------------------------------------------------------------------


async def test_the_sweep_works_through_more_than_one_batch(redis_url: str, redis_prefix: str, clock: Clock) -> None:
    # 1,001 reservations at once wait for the pool's 64 connections: give them longer than a request would get.
    ledger = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=redis_prefix, clock=clock, timeout_s=30)
    try:
        await _sweep_more_than_one_batch(ledger, clock)
    finally:
        await ledger.aclose()


async def _sweep_more_than_one_batch(ledger: RedisBudgetLedger, clock: Clock) -> None:
    budget = route("100")
    await asyncio.gather(*(ledger.reserve([budget], usd=CENT, tokens=1) for _ in range(1001)))
    clock.advance(timedelta(hours=1))
    recent = await ledger.reserve([budget], usd=CENT, tokens=1)

    assert await ledger.sweep_stale(timedelta(minutes=30)) == 1001

    assert await used(ledger, budget) == (CENT * 1001, CENT, 1001, 1)  # swept as spent: fail closed
    await ledger.release(recent)
    assert await used(ledger, budget) == (CENT * 1001, 0, 1001, 0)


async def test_the_sweep_forgets_reservations_that_expired_with_their_period(
    ledger: RedisBudgetLedger, clock: Clock, client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    daily = route("1", period="day")
    gone = await ledger.reserve([daily], usd=CENT, tokens=1)
    await client.delete(f"{redis_prefix}reservation:{gone.id}", f"{redis_prefix}usage:2026-11-21:route:support")
    clock.advance(timedelta(days=40))

    assert await ledger.sweep_stale(timedelta(minutes=30)) == 0  # nothing left to give back

    assert await client.zcard(f"{redis_prefix}reservations") == 0
    await ledger.release(gone)  # nor does a late release bring the expired counters back
    assert await client.exists(f"{redis_prefix}usage:2026-11-21:route:support") == 0


async def test_a_reserve_sent_twice_charges_once(ledger: RedisBudgetLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    # What redis-py's one retry after a broken connection does when the first attempt had run.
    budget = route("1")
    fixed = uuid.uuid4()
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)

    first = await ledger.reserve([budget], usd=CENT, tokens=1)
    again = await ledger.reserve([budget], usd=CENT, tokens=1)

    assert first.id == again.id
    assert await used(ledger, budget) == (0, CENT, 0, 1)


async def test_a_cancelled_reserve_leaves_nothing_reserved(redis_url: str, redis_prefix: str, clock: Clock) -> None:
    budget = route("1")
    ledger = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=redis_prefix, clock=clock)
    for pause in range(6):
        task = asyncio.create_task(ledger.reserve([budget], usd=CENT, tokens=1))
        for _ in range(pause):
            await asyncio.sleep(0)  # cancelled before, while and after the script runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await ledger.aclose()  # waits for scripts that ran anyway to be released

    reader = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=redis_prefix, clock=clock)
    try:
        assert await used(reader, budget) == ZERO
        assert await reader.sweep_stale(timedelta(0)) == 0
    finally:
        await reader.aclose()


async def test_a_cancelled_settle_is_still_recorded(redis_url: str, redis_prefix: str, clock: Clock) -> None:
    budget = route("1")
    ledger = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=redis_prefix, clock=clock)
    reservation = await ledger.reserve([budget], usd=CENT, tokens=1)
    task = asyncio.create_task(ledger.settle(reservation, usd=CENT, tokens=1))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ledger.aclose()

    reader = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=redis_prefix, clock=clock)
    try:
        assert await used(reader, budget) == (CENT, 0, 1, 0)
    finally:
        await reader.aclose()


# --- connections and failures -----------------------------------------------------------------------------------


async def test_the_scripts_are_loaded_again_after_a_flush(
    ledger: RedisBudgetLedger, clock: Clock, client: redis.asyncio.Redis
) -> None:
    budget = route("1")
    await ledger.reserve([budget], usd=CENT, tokens=0)
    # Harmless to anything else on this Redis: a script missing from the cache is sent again.
    await client.script_flush()

    reservation = await ledger.reserve([budget], usd=CENT, tokens=0)
    await client.script_flush()
    await ledger.settle(reservation, usd=CENT, tokens=0)
    clock.advance(timedelta(seconds=1))
    await client.script_flush()
    assert await ledger.sweep_stale(timedelta(0)) == 1

    assert await used(ledger, budget) == (2 * CENT, 0, 0, 0)  # the swept one counts as spent


async def test_a_ledger_on_an_existing_client(redis_url: str, redis_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        ledger = RedisBudgetLedger.from_client(client, prefix=redis_prefix)
        budget = route("0.02")
        reservation = await ledger.reserve([budget], usd=CENT, tokens=3)
        await ledger.settle(reservation, usd=CENT, tokens=2)
        await ledger.reserve([budget], usd=CENT, tokens=0)
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([budget], usd=CENT, tokens=0)
        assert await used(ledger, budget) == (CENT, CENT, 2, 0)
        assert ledger.url == "redis://127.0.0.1:6379/0"

        await ledger.aclose()  # the client is the caller's: still usable

        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_closed_ledger_refuses(redis_url: str, redis_prefix: str) -> None:
    ledger = RedisBudgetLedger(redis_url, persistence_verified=True, prefix=redis_prefix)
    await ledger.aclose()
    with pytest.raises(StoreError, match="closed"):
        await ledger.reserve([route("1")], usd=CENT, tokens=0)
    with pytest.raises(StoreError, match="closed"):
        await ledger.usage(route("1"))


async def test_an_unreachable_redis_fails_closed_fast_naming_the_url_but_not_the_password() -> None:
    ledger = RedisBudgetLedger("redis://:hunter2@127.0.0.1:6399/0", timeout_s=0.5, persistence_verified=True)
    budget = route("1")
    reservation = Reservation("0" * 32, (budget,), CENT, 0, ("all",))
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await ledger.reserve([budget], usd=CENT, tokens=0)
        for operation in (
            ledger.settle(reservation, usd=CENT, tokens=0),
            ledger.release(reservation),
            ledger.usage(budget),
            ledger.sweep_stale(timedelta(minutes=30)),
        ):
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await operation
    finally:
        await ledger.aclose()

    assert time.monotonic() - started < 3
    message = str(refused.value)
    # The first reserve reads the ledger's epoch marker first: that is what fails.
    assert "reading the budget epoch failed" in message
    assert "redis://127.0.0.1:6399/0" in message
    assert "unreachable" in message
    assert "[gateway] redis_url" in message
    assert "hunter2" not in message
    assert ledger.url == "redis://127.0.0.1:6399/0"
    assert "hunter2" not in repr(ledger)


async def test_a_redis_that_never_answers_times_out_instead_of_hanging() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ledger = RedisBudgetLedger(f"redis://127.0.0.1:{port}/0", timeout_s=0.2, persistence_verified=True)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
            await ledger.reserve([route("1")], usd=CENT, tokens=0)
    finally:
        await ledger.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()

    assert time.monotonic() - started < 2


def test_an_invalid_url_or_setting_is_refused_without_the_password() -> None:
    with pytest.raises(ConfigError) as refused:
        RedisBudgetLedger("http://user:hunter2@127.0.0.1:6379/0")
    assert "http://user@127.0.0.1:6379/0" in str(refused.value)
    assert "hunter2" not in str(refused.value)

    with pytest.raises(ValueError, match="timeout_s"):
        RedisBudgetLedger("redis://127.0.0.1:6379/0", timeout_s=0)
    with pytest.raises(ValueError, match="max_connections"):
        RedisBudgetLedger("redis://127.0.0.1:6379/0", max_connections=0)
    with pytest.raises(ValueError, match="retention"):
        RedisBudgetLedger("redis://127.0.0.1:6379/0", retention=timedelta(0))
