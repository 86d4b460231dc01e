"""``tether cost``: totals, groups, hotspots, cache savings, unknown prices apart; on SQLite and PostgreSQL."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from tests.store import conftest as store_fixtures
from tether.cli import app, main
from tether.cli.cost import By
from tether.gateway.ledger import DIMENSIONS, CostLedger
from tether.messages import Usage
from tether.pricing import CONFIGURED_PRICE_VERSION, PRICE_DATA_VERSION, CostRecord, PriceRef, price_usage
from tether.store import open_store

# The store tests' fixtures: a SQLite file, or a PostgreSQL schema of the test's own, per ``backend``.
backend = store_fixtures.backend
store_url = store_fixtures.store_url

runner = CliRunner()
SONNET = PriceRef("anthropic", "claude-sonnet-4-5")


def call(
    *,
    route: str = "support",
    model: str = "claude-sonnet-4-5",
    provider: str = "anthropic",
    agent: str | None = "oncall",
    run_id: str | None = "run-aaaa",
    usage: Usage | None = None,
    ago: timedelta = timedelta(hours=1),
) -> CostRecord:
    usage = usage or Usage(input_tokens=10_000, output_tokens=500, cache_read_tokens=8_000)
    return CostRecord(
        time_ns=int((datetime.now(UTC) - ago).timestamp() * 1e6) * 1000,
        route=route,
        deployment=f"{model}-a",
        provider=provider,
        model=model,
        agent=agent,
        key="ci-bot",
        run_id=run_id,
        usage=usage,
        cost_usd=price_usage(PriceRef(provider, model), usage).usd,
        price_version=PRICE_DATA_VERSION,
    )


def seed(store_url: str, records: list[CostRecord]) -> None:
    with open_store(store_url) as store:
        CostLedger(store).record(records)


def cost(store_url: str, *args: str) -> str:
    result = runner.invoke(app, ["cost", "--database", store_url, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def seeded(store_url: str) -> list[CostRecord]:
    records = [
        call(),
        call(route="triage", agent="triage", run_id="run-bbbb"),
        call(route="triage", agent="triage", run_id="run-bbbb", usage=Usage(input_tokens=200_000, output_tokens=4000)),
        call(route="local", provider="openai", model="llama3", agent=None, run_id=None),
        call(route="local", provider="openai", model="llama3", agent=None, run_id=None),
        call(route="old", ago=timedelta(days=30)),
    ]
    seed(store_url, records)
    return records


def test_json_has_totals_groups_hotspots_savings_and_unknowns(store_url: str, seeded: list[CostRecord]) -> None:
    data = orjson.loads(cost(store_url, "--json"))

    recent = [r for r in seeded if r.route != "old"]
    priced = [r.cost_usd for r in recent if r.cost_usd is not None]
    assert data["by"] == "route"
    assert data["total"]["calls"] == 5 and data["total"]["unpriced_calls"] == 2
    assert data["total"]["cost_usd"] == pytest.approx(float(sum(priced, Decimal(0))))
    assert data["total"]["input_tokens"] == sum(r.usage.input_tokens for r in recent)
    assert [g["key"] for g in data["groups"]] == ["triage", "support", "local"]  # most expensive first, unknown last
    local = data["groups"][2]
    assert local["cost_usd"] is None and local["cost_nanousd"] is None and local["unpriced_calls"] == 2
    assert data["unpriced"] == {"calls": 2, "models": [{"provider": "openai", "model": "llama3", "calls": 2}]}
    assert [r["key"] for r in data["top_runs"]] == ["run-bbbb", "run-aaaa"]
    assert data["top_runs"][0]["agent"] == "triage"
    assert [a["key"] for a in data["top_agents"]] == ["triage", "oncall"]
    sonnet = next(m for m in data["cache_savings"]["models"] if m["model"] == "claude-sonnet-4-5")
    assert sonnet["cache_read_tokens"] == 16_000
    assert sonnet["saved_usd"] == pytest.approx(16_000 * 2.7 / 1e6)  # $3/M input vs $0.30/M cache read
    llama = next(m for m in data["cache_savings"]["models"] if m["model"] == "llama3")
    assert llama["saved_usd"] is None


def test_since_and_by(store_url: str, seeded: list[CostRecord]) -> None:
    everything = orjson.loads(cost(store_url, "--json", "--since", "all", "--by", "model"))
    assert everything["total"]["calls"] == 6 and everything["since"] is None
    assert {g["key"] for g in everything["groups"]} == {"claude-sonnet-4-5", "llama3"}

    days = orjson.loads(cost(store_url, "--json", "--since", "60d", "--by", "day"))
    keys = [g["key"] for g in days["groups"]]
    assert keys == sorted(keys) and len(keys) == 2

    top = orjson.loads(cost(store_url, "--json", "--top", "1"))
    assert len(top["groups"]) == 1 and top["more_groups"] == 2 and len(top["top_runs"]) == 1


def test_the_table_report(store_url: str, seeded: list[CostRecord]) -> None:
    out = cost(store_url)

    assert "spent since" in out and "(7d)" in out
    assert "2 calls with unknown price, not included" in out and "openai:llama3 ×2" in out
    assert '[prices."llama3"]' in out
    assert "spend by route" in out and "unknown" in out
    assert "most expensive runs" in out and "run-bbbb" in out
    assert "most expensive agents" in out
    assert "what prompt caching saved" in out and "caching saved $0.0432" in out
    assert "$0 " not in out  # an unknown price is never shown as $0


def test_an_empty_ledger_says_how_to_get_data(store_url: str) -> None:
    open_store(store_url).close()  # a store with no calls (no store at all is tests/cli/test_cli_for_people.py)
    out = cost(store_url)

    assert "no model calls recorded yet" in out
    assert "tether gateway serve" in out and "cost_sink=CostWriter(store)" in out
    data = orjson.loads(cost(store_url, "--json"))
    assert data["total"]["calls"] == 0 and data["groups"] == [] and data["total"]["cost_usd"] is None


def test_an_empty_window_points_at_older_calls(store_url: str) -> None:
    seed(store_url, [call(ago=timedelta(days=30))])

    out = cost(store_url, "--since", "1d")

    assert "no model calls since" in out and "--since all" in out


def test_a_bad_since_is_one_clear_line(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["tether", "cost", "--since", "last tuesday", "--database", store_url])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--since 'last tuesday' is not a time" in err


def test_configured_prices_price_the_savings(store_url: str) -> None:
    Path("tether.toml").write_text(
        '[prices."my-model"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\ncache_read_per_mtok = 0.5\n'
    )
    usage = Usage(input_tokens=2_000_000, cache_read_tokens=1_000_000)
    priced = replace(call(provider="openai", model="my-model", usage=usage), cost_usd=Decimal("2.5"))
    seed(store_url, [replace(priced, price_version=CONFIGURED_PRICE_VERSION)])

    data = orjson.loads(cost(store_url, "--json"))

    (saving,) = data["cache_savings"]["models"]
    assert saving["saved_usd"] == pytest.approx(1.5)


def test_the_by_choices_are_the_ledgers_dimensions() -> None:
    assert tuple(b.value for b in By) == DIMENSIONS
    result = runner.invoke(app, ["cost", "--by", "team"])
    assert result.exit_code == 2
