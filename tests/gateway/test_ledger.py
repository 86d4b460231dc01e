"""The cost ledger: the batched writer, its behaviour in an outage, and the reports ``tether cost`` prints.

Every test that touches the store runs on SQLite and on the machine's
PostgreSQL (a schema of its own per test, as in ``tests/store``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from tests.store import conftest as store_fixtures
from tether.config import GatewayConfig, PriceConfig
from tether.errors import StoreUnavailable
from tether.gateway.gateway import CallContext, Gateway
from tether.gateway.ledger import DIMENSIONS, CostLedger, CostWriter, Dimension, cost_row
from tether.messages import Message, ModelRequest, Usage
from tether.pricing import PRICE_DATA_VERSION, CostRecord, Pricer, PriceRef, price_usage
from tether.store import TraceStore, open_store

# The store tests' fixtures: a SQLite file, or a PostgreSQL schema of the test's own, per ``backend``.
backend = store_fixtures.backend
store_url = store_fixtures.store_url

SONNET = PriceRef("anthropic", "claude-sonnet-4-5")
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
NOW_NS = int(NOW.timestamp()) * 1_000_000_000


def record(
    *,
    at: datetime = NOW,
    route: str = "support",
    deployment: str = "sonnet-a",
    provider: str = "anthropic",
    model: str = "claude-sonnet-4-5",
    agent: str | None = "triage",
    key: str | None = "ci-bot",
    run_id: str | None = "run-1",
    usage: Usage | None = None,
    priced: bool = True,
) -> CostRecord:
    """A settled call, priced with genai-prices unless ``priced`` is False."""
    usage = usage or Usage(input_tokens=1000, output_tokens=100)
    cost = price_usage(PriceRef(provider, model), usage).usd if priced else None
    return CostRecord(
        time_ns=int(at.timestamp() * 1_000_000) * 1000,
        route=route,
        deployment=deployment,
        provider=provider,
        model=model,
        agent=agent,
        key=key,
        run_id=run_id,
        usage=usage,
        cost_usd=cost,
        price_version=PRICE_DATA_VERSION,
    )


def nanos(usd: Decimal) -> int:
    return int((usd * 10**9).to_integral_value(rounding=ROUND_CEILING))


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def ledger(store: TraceStore) -> CostLedger:
    return CostLedger(store)


def stored(store: TraceStore) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM costs")).scalar_one())


class Spy(CostLedger):
    """A real ledger that records its batches and can be switched off to play an outage."""

    def __init__(self, store: TraceStore) -> None:
        super().__init__(store)
        self.batches: list[int] = []
        self.down = False
        self.attempts = 0

    def write(self, rows: Sequence[Mapping[str, object]]) -> None:
        self.attempts += 1
        if self.down:
            raise StoreUnavailable(
                f"cannot reach PostgreSQL at {self.url}: connection refused — is the server running?"
            )
        super().write(rows)
        self.batches.append(len(rows))


# -- the writer ------------------------------------------------------------------------------


def test_the_writer_inserts_in_batches(store: TraceStore) -> None:
    spy = Spy(store)
    writer = CostWriter(spy, interval_s=60, batch_size=3)
    try:
        for i in range(7):
            writer(record(run_id=f"run-{i}"))
        assert writer.flush()
    finally:
        writer.shutdown()

    assert sum(spy.batches) == 7 and all(size <= 3 for size in spy.batches)
    assert stored(store) == 7 and writer.written == 7


def test_a_full_batch_wakes_the_writer_early(store: TraceStore) -> None:
    writer = CostWriter(store, interval_s=60, batch_size=5)
    try:
        for _ in range(5):
            writer(record())
        deadline = time.monotonic() + 10
        while writer.written < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.written == 5
    finally:
        writer.shutdown()


def test_shutdown_writes_what_is_queued(store: TraceStore) -> None:
    writer = CostWriter(store, interval_s=60)
    for _ in range(4):
        writer(record())
    writer.shutdown()

    assert stored(store) == 4
    writer(record())  # after shutdown: dropped, never raised
    assert writer.dropped == 1


def test_the_writer_survives_an_outage(store: TraceStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tether.trace.processor")  # the batching writer CostWriter uses
    spy = Spy(store)
    spy.down = True
    writer = CostWriter(spy, interval_s=60, batch_size=2, max_buffer=5)
    try:
        for i in range(8):
            writer(record(run_id=f"run-{i}"))  # never raises into the caller
        assert not writer.flush()
        assert not writer.flush()
        assert writer.pending == 5 and writer.dropped == 3  # bounded: the oldest go first
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "not stored yet" in warnings[0].getMessage()

        spy.down = False
        assert writer.flush()
    finally:
        writer.shutdown()

    assert writer.written == 5 and stored(store) == 5
    report = CostLedger(store).report(by="day")
    assert report.total.calls == 5
    assert {r.key for r in CostLedger(store).report(top=100).top_runs} == {f"run-{i}" for i in range(3, 8)}
    assert any("cost records at" in r.getMessage() and "stored again" in r.getMessage() for r in caplog.records)


def test_a_batch_sent_twice_is_stored_once(ledger: CostLedger, store: TraceStore) -> None:
    rows = [cost_row(record()) for _ in range(3)]
    ledger.write(rows)
    ledger.write(rows)  # e.g. the commit went through but its acknowledgement was lost

    assert stored(store) == 3


def test_malformed_records_are_rejected_without_raising(store: TraceStore, caplog: pytest.LogCaptureFixture) -> None:
    writer = CostWriter(store, interval_s=60)
    try:
        writer(replace(record(), cost_usd=Decimal("NaN")))
        writer(replace(record(), cost_usd=Decimal(-1)))
        writer(replace(record(), usage=Usage.model_construct(input_tokens=-5)))
        writer(replace(record(), time_ns=-1))
        writer(record(route="bad\x00name"))  # PostgreSQL text cannot hold NUL: stripped
        assert writer.flush()
    finally:
        writer.shutdown()

    assert writer.rejected == 4 and writer.written == 1
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
    assert [g.key for g in CostLedger(store).report().groups] == ["badname"]


def test_rows_carry_the_utc_day_and_the_cost_in_nanodollars() -> None:
    late = datetime(2026, 11, 21, 23, 59, 59, tzinfo=UTC)
    row = cost_row(record(at=late, usage=Usage(input_tokens=1, output_tokens=0)))
    assert row["day"] == "2026-11-21"
    assert row["cost_nanousd"] == 3_000  # $3 per million input tokens
    assert cost_row(record(priced=False))["cost_nanousd"] is None  # unknown, never 0
    # Fractions of a nano-dollar round up, as the budget ledger rounds spend.
    assert cost_row(replace(record(), cost_usd=Decimal("0.0000000001")))["cost_nanousd"] == 1


# -- reports ---------------------------------------------------------------------------------


def mixed_records() -> list[CostRecord]:
    rng = random.Random(7)
    made = []
    for i in range(60):
        usage = Usage(
            input_tokens=rng.randint(100, 5000),
            output_tokens=rng.randint(10, 800),
            cache_read_tokens=rng.choice([0, 50, 90]),
            cache_write_tokens=rng.choice([0, 10]),
        )
        model = rng.choice(["claude-sonnet-4-5", "claude-haiku-4-5", "llama3"])
        made.append(
            record(
                at=NOW - timedelta(days=rng.randint(0, 3), minutes=rng.randint(0, 600)),
                route=rng.choice(["support", "triage", "billing"]),
                deployment=rng.choice(["a", "b"]),
                provider="openai" if model == "llama3" else "anthropic",
                model=model,
                agent=rng.choice(["oncall", "triage", None]),
                key=rng.choice(["ci-bot", "web", None]),
                run_id=f"run-{i % 9}",
                usage=usage,
                priced=model != "llama3",
            )
        )
    return made


def expected_groups(records: list[CostRecord], by: Dimension) -> dict[str | None, dict[str, Any]]:
    groups: dict[str | None, dict[str, Any]] = defaultdict(lambda: {"calls": 0, "unpriced": 0, "in": 0, "nanos": None})
    for r in records:
        value = datetime.fromtimestamp(r.time_ns / 1e9, UTC).strftime("%Y-%m-%d") if by == "day" else getattr(r, by)
        group = groups[value]
        group["calls"] += 1
        group["in"] += r.usage.input_tokens
        if r.cost_usd is None:
            group["unpriced"] += 1
        else:
            group["nanos"] = (group["nanos"] or 0) + nanos(r.cost_usd)
    return groups


@pytest.mark.parametrize("by", DIMENSIONS)
def test_spend_is_grouped_by_each_dimension(ledger: CostLedger, by: Dimension) -> None:
    records = mixed_records()
    ledger.record(records)

    report = ledger.report(by=by, top=100)

    expected = expected_groups(records, by)
    assert {g.key for g in report.groups} == set(expected) and report.more_groups == 0
    for group in report.groups:
        want = expected[group.key]
        assert (group.calls, group.unpriced_calls, group.input_tokens, group.cost_nanousd) == (
            want["calls"],
            want["unpriced"],
            want["in"],
            want["nanos"],
        ), group.key
    if by == "day":
        assert [g.key for g in report.groups] == sorted(expected)  # by date
    else:
        costs = [g.cost_nanousd for g in report.groups if g.cost_nanousd is not None]
        assert costs == sorted(costs, reverse=True)


def test_unknown_prices_are_counted_apart_and_never_summed(ledger: CostLedger) -> None:
    priced = [record(route="support") for _ in range(3)]
    unpriced = [record(route="local", provider="openai", model="llama3", priced=False) for _ in range(2)]
    ledger.record(priced + unpriced)

    report = ledger.report()

    expected = sum(nanos(r.cost_usd) for r in priced if r.cost_usd is not None)
    assert report.total.calls == 5 and report.total.unpriced_calls == 2
    assert report.total.cost_nanousd == expected
    assert report.total.input_tokens == 5000  # tokens are known either way
    by_route = {g.key: g for g in report.groups}
    assert by_route["local"].cost_nanousd is None and by_route["local"].cost_usd is None  # unknown, not $0
    assert by_route["local"].unpriced_calls == 2
    assert [(u.provider, u.model, u.calls) for u in report.unpriced] == [("openai", "llama3", 2)]


def test_the_window_cuts_at_the_exact_moment(ledger: CostLedger) -> None:
    ledger.record(
        [
            record(at=NOW - timedelta(days=10), run_id="old"),
            record(at=NOW - timedelta(hours=2), run_id="early-today"),
            record(at=NOW - timedelta(minutes=30), run_id="recent"),
        ]
    )

    assert ledger.report(since=NOW - timedelta(hours=1)).total.calls == 1
    assert ledger.report(since=(NOW - timedelta(hours=3)).replace(tzinfo=None)).total.calls == 2  # naive = UTC
    assert ledger.report(since=NOW - timedelta(days=30)).total.calls == 3
    assert ledger.report().total.calls == 3
    assert ledger.report(since=NOW + timedelta(minutes=1)).empty
    assert ledger.has_rows()


def test_hotspots_are_the_most_expensive_runs_and_agents(ledger: CostLedger) -> None:
    big = Usage(input_tokens=100_000, output_tokens=5_000)
    ledger.record(
        [
            record(run_id="cheap", agent="triage"),
            record(run_id="costly", agent="oncall", usage=big),
            record(run_id="costly", agent="oncall", usage=big),
            record(run_id="middle", agent="triage", usage=Usage(input_tokens=20_000, output_tokens=100)),
            record(run_id="unknown", agent="local", model="llama3", provider="openai", priced=False),
            record(run_id=None, agent=None),
        ]
    )

    report = ledger.report(top=2)

    assert [(r.key, r.agent, r.calls) for r in report.top_runs] == [("costly", "oncall", 2), ("middle", "triage", 1)]
    assert [a.key for a in report.top_agents] == ["oncall", "triage"]
    all_runs = ledger.report(top=10).top_runs
    assert "unknown" not in {r.key for r in all_runs}  # an unknown cost is not known to be expensive
    assert None not in {r.key for r in all_runs}


def test_top_limits_the_groups_and_says_how_many_more(ledger: CostLedger) -> None:
    ledger.record([record(route=f"route-{i}", usage=Usage(input_tokens=1000 * (i + 1))) for i in range(6)])

    report = ledger.report(top=4)

    assert [g.key for g in report.groups] == ["route-5", "route-4", "route-3", "route-2"]
    assert report.more_groups == 2
    days = ledger.report(by="day", top=1)
    assert [g.key for g in days.groups] == ["2026-11-21"] and days.more_groups == 0


def test_an_empty_ledger_reports_nothing(ledger: CostLedger) -> None:
    report = ledger.report(since=NOW - timedelta(days=7))

    assert report.empty and not ledger.has_rows()
    assert report.total.cost_nanousd is None and report.groups == () and report.saved_usd == 0
    orjson.dumps(report.to_dict())


def test_report_arguments_are_checked(ledger: CostLedger) -> None:
    with pytest.raises(ValueError, match="cannot group costs by 'team'"):
        ledger.report(by="team")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top"):
        ledger.report(top=0)


# -- cache savings ---------------------------------------------------------------------------


def genai_saving(provider: str, model: str, usage: Usage) -> Decimal:
    """What one call's cache reads saved, straight from genai-prices."""
    plain = calc_price(PriceUsage(input_tokens=usage.input_tokens), model_ref=model, provider_id=provider)
    actual = calc_price(
        PriceUsage(input_tokens=usage.input_tokens, cache_read_tokens=usage.cache_read_tokens),
        model_ref=model,
        provider_id=provider,
    )
    return Decimal(plain.total_price) - Decimal(actual.total_price)


def test_cache_savings_for_claude_sonnet_match_genai_prices(ledger: CostLedger) -> None:
    calls = [
        Usage(input_tokens=100_000, output_tokens=500, cache_read_tokens=90_000),
        Usage(input_tokens=50_000, output_tokens=200, cache_read_tokens=40_000),
        Usage(input_tokens=4_000, output_tokens=100),  # no cache read
        Usage(input_tokens=250_000, output_tokens=100, cache_read_tokens=200_000),  # long-context tier
    ]
    ledger.record([record(usage=u) for u in calls])

    (saving,) = ledger.report().cache_savings

    assert (saving.provider, saving.model, saving.cache_read_tokens) == ("anthropic", "claude-sonnet-4-5", 330_000)
    expected = sum((genai_saving("anthropic", "claude-sonnet-4-5", u) for u in calls), Decimal(0))
    assert saving.saved_usd == expected
    # By hand: $3/M input vs $0.30/M cache read below 200k tokens of prompt; $6 vs $0.60 above.
    assert expected == Decimal("130000") * Decimal("2.7") / 10**6 + Decimal("200000") * Decimal("5.4") / 10**6


def test_a_million_cache_read_tokens_on_sonnet_save_two_dollars_seventy(ledger: CostLedger) -> None:
    ledger.record([record(usage=Usage(input_tokens=110_000, cache_read_tokens=100_000)) for _ in range(10)])

    report = ledger.report()

    assert report.saved_usd == Decimal("2.70")


def test_savings_are_unknown_for_a_model_without_a_price(ledger: CostLedger) -> None:
    cached = Usage(input_tokens=1000, cache_read_tokens=800)
    ledger.record(
        [
            record(provider="openai", model="llama3", usage=cached, priced=False),
            record(usage=cached),
            record(usage=cached, priced=False),  # e.g. recorded before its price was known
        ]
    )

    savings = {s.model: s for s in ledger.report().cache_savings}

    assert savings["llama3"].saved_usd is None
    sonnet = savings["claude-sonnet-4-5"]
    assert sonnet.cache_read_tokens == 1600 and sonnet.unpriced_cache_read_tokens == 800
    assert sonnet.saved_usd == genai_saving("anthropic", "claude-sonnet-4-5", cached)
    assert ledger.report().saved_usd == sonnet.saved_usd


def test_savings_of_a_simulated_model_use_the_real_models_prices(ledger: CostLedger) -> None:
    usage = Usage(input_tokens=1000, cache_read_tokens=1000)
    # The gateway prices a sim deployment as the model it names.
    ledger.record([replace(record(provider="sim", usage=usage), cost_usd=price_usage(SONNET, usage).usd)])

    (saving,) = ledger.report().cache_savings

    assert saving.saved_usd == genai_saving("anthropic", "claude-sonnet-4-5", usage)


def test_savings_use_configured_prices_first(ledger: CostLedger) -> None:
    usage = Usage(input_tokens=300_000, cache_read_tokens=250_000)
    prices = PriceConfig(input_per_mtok=Decimal(2), output_per_mtok=Decimal(8), cache_read_per_mtok=Decimal("0.5"))
    pricer = Pricer({"my-finetune": prices})
    cost = pricer.price(None, "my-finetune", usage)
    call = record(provider="openai", model="my-finetune", usage=usage)
    ledger.record([replace(call, cost_usd=cost.usd, price_version=cost.price_version)])

    (saving,) = ledger.report(pricer=pricer).cache_savings

    assert saving.saved_usd == Decimal("250000") * Decimal("1.5") / 10**6  # flat: no context tiers
    assert ledger.report().cache_savings[0].saved_usd is None  # genai-prices alone does not know it


def test_the_report_is_plain_json(ledger: CostLedger) -> None:
    ledger.record(mixed_records())

    data = orjson.loads(orjson.dumps(ledger.report(by="model").to_dict()))

    assert data["by"] == "model" and data["since"] is None
    assert data["total"]["calls"] == 60
    assert data["unpriced"]["calls"] == sum(g["unpriced_calls"] for g in data["groups"])
    assert data["cache_savings"]["saved_usd"] > 0
    known = [g for g in data["groups"] if g["cost_nanousd"] is not None]
    assert sum(g["cost_nanousd"] for g in known) == data["total"]["cost_nanousd"]


# -- with the gateway ------------------------------------------------------------------------


async def test_the_writer_is_the_gateways_cost_sink(store: TraceStore) -> None:
    cfg = GatewayConfig.model_validate(
        {
            "providers": {"sim": {"kind": "sim"}},
            "deployments": {"sonnet": {"provider": "sim", "model": "claude-sonnet-4-5"}},
            "routes": {"support": {"tiers": [["sonnet"]]}},
        }
    )
    writer = CostWriter(store, interval_s=60)
    gateway = Gateway(cfg, cost_sink=writer)
    spent: list[Decimal] = []
    try:
        for i in range(3):
            request = ModelRequest(model="", messages=(Message.user(f"question {i}"),), max_tokens=50)
            response = await gateway.complete(request, CallContext(route="support", agent="oncall", run_id="r1"))
            assert response.cost_usd is not None
            spent.append(response.cost_usd)
    finally:
        await gateway.aclose()
        writer.shutdown()

    report = CostLedger(store).report(by="deployment")
    assert report.total.calls == 3 and report.total.unpriced_calls == 0
    assert [(g.key, g.calls) for g in report.groups] == [("sonnet", 3)]
    assert report.total.cost_nanousd == sum(nanos(c) for c in spent)  # each call rounded up to the nano-dollar
    assert [(r.key, r.agent) for r in report.top_runs] == [("r1", "oncall")]


def test_a_large_batch_is_stored_whole_with_every_field_and_a_rewrite_changes_nothing(
    store: TraceStore, ledger: CostLedger
) -> None:
    # More rows than one multi-row statement takes on SQLite (tether.store.bulk), odd sized.
    records = [
        record(run_id=f"run-{i}", usage=Usage(input_tokens=1000 + i, output_tokens=i, cache_read_tokens=i // 2))
        for i in range(1234)
    ]
    rows = [cost_row(r) for r in records]
    ledger.write(rows)
    ledger.write(rows[:600])  # the same ids again: skipped

    assert stored(store) == 1234
    with store.engine.connect() as connection:
        got = connection.execute(
            sa.text(
                "SELECT input_tokens, output_tokens, cache_read_tokens, cost_nanousd FROM costs "
                "WHERE run_id = 'run-777'"
            )
        ).one()
    assert tuple(got) == (1777, 777, 388, rows[777]["cost_nanousd"])
