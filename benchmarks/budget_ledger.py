"""Budget ledger throughput: reserve+settle pairs per second through ``SqlBudgetLedger``.

Each pair is what the gateway does around one model call: ``reserve`` the
worst case on two budgets (a route and a virtual key, as the proxy charges),
then ``settle`` the real cost. Every call draws on the same two budgets, so
the two usage rows are as hot as they get: the worst case for a ledger that
must lock them.

Measured at concurrency 1 (one caller at a time: a batch of one) and 64 (the
proxy benchmark's client count), on a SQLite file in a temporary directory and
on the machine's PostgreSQL (``TETHER_BENCH_POSTGRES_URL``, else
``TETHER_TEST_POSTGRES_URL``, else the tests' default) in a scratch schema
dropped afterwards. Each figure is the median of a few timed rounds on a
uvloop event loop, as the proxy runs; after each backend the budget's spend
is checked against the number of pairs, so a fast but wrong ledger fails.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
import uvloop

from tether.config import BudgetLimit
from tether.gateway.budget import BudgetScope, SqlBudgetLedger

CONCURRENCY: Final = (1, 64)
ROUNDS: Final = 3
ROUND_S: Final = 1.5
RESERVE_USD: Final = Decimal("0.002")
RESERVE_TOKENS: Final = 1_000
SETTLE_USD: Final = Decimal("0.0013")
SETTLE_TOKENS: Final = 600
# Room for far more pairs than any round makes: the benchmark measures grants, never refusals.
_LIMIT = BudgetLimit(usd=Decimal(1_000_000))
SCOPES: Final = (BudgetScope("route", "bench", _LIMIT), BudgetScope("key", "bench", _LIMIT))
DEFAULT_POSTGRES_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


async def _round(ledger: SqlBudgetLedger, concurrency: int, seconds: float) -> tuple[int, float]:
    """Pairs completed by ``concurrency`` callers in about ``seconds``, and the exact time taken."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    pairs = 0

    async def caller() -> None:
        nonlocal pairs
        while loop.time() < deadline:
            reservation = await ledger.reserve(SCOPES, usd=RESERVE_USD, tokens=RESERVE_TOKENS)
            await ledger.settle(reservation, usd=SETTLE_USD, tokens=SETTLE_TOKENS)
            pairs += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return pairs, time.perf_counter() - started


async def _measure(url: str) -> list[tuple[int, float, float]]:
    """Per concurrency: (concurrency, median pairs/s, transactions per pair)."""
    ledger = SqlBudgetLedger.open(url)
    try:
        done, _ = await _round(ledger, 4, 0.2)  # warm-up: connections opened, worker threads started
        figures: list[tuple[int, float, float]] = []
        for concurrency in CONCURRENCY:
            rates: list[float] = []
            pairs_here = 0
            transactions_before = ledger.transactions
            for _ in range(ROUNDS):
                pairs, elapsed = await _round(ledger, concurrency, ROUND_S)
                rates.append(pairs / elapsed)
                pairs_here += pairs
            per_pair = (ledger.transactions - transactions_before) / max(pairs_here, 1)
            figures.append((concurrency, statistics.median(rates), per_pair))
            done += pairs_here
        for scope in SCOPES:
            usage = await ledger.usage(scope)
            expected = (SETTLE_USD * done, 0, SETTLE_TOKENS * done, 0)
            got = (usage.spent_usd, usage.reserved_usd, usage.spent_tokens, usage.reserved_tokens)
            assert got == expected, f"{scope} after {done} pairs: {got}, expected {expected}"
        return figures
    finally:
        await ledger.aclose()


def _run_loop(url: str) -> list[tuple[int, float, float]]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_measure(url))


@contextmanager
def _scratch_schema(admin_url: str) -> Iterator[str]:
    """A URL on a new, empty schema of the PostgreSQL database at ``admin_url``; dropped on exit."""
    schema = f"tether_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        try:
            url = sa.make_url(admin_url).update_query_dict({"options": f"-csearch_path={schema}"})
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()


def _rows(backend: str, figures: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
    return [
        {
            "benchmark": "budget_ledger",
            "metric": f"reserve+settle pairs/s, {backend}, concurrency {concurrency}",
            "value": rate,
            "unit": "pairs/s",
            "target": "(info)",
            "ok": True,
            "notes": f"2 budgets per call (route + key, the same hot rows for every call); "
            f"{per_pair:.3f} transactions per pair; median of {ROUNDS} rounds x {ROUND_S:g} s on uvloop",
        }
        for concurrency, rate, per_pair in figures
    ]


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += _rows("SQLite", _run_loop(f"sqlite:///{Path(tmp) / 'budget.db'}"))
    postgres = os.environ.get("TETHER_BENCH_POSTGRES_URL") or os.environ.get(
        "TETHER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL
    )
    try:
        with _scratch_schema(postgres) as url:
            rows += _rows("PostgreSQL", _run_loop(url))
    except sa.exc.OperationalError as exc:
        rows.append(
            {
                "benchmark": "budget_ledger",
                "metric": "reserve+settle pairs/s, PostgreSQL",
                "value": float("nan"),
                "unit": "pairs/s",
                "target": "(info)",
                "ok": False,
                "notes": f"PostgreSQL at {sa.make_url(postgres).render_as_string()} unreachable: "
                f"{str(exc.orig).splitlines()[0] if exc.orig else exc}",
            }
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
