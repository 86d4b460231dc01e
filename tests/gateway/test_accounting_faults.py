"""Accounting under failures, in process: the cost journal, spend retried until recorded, bounded store waits.

The real-process versions (SIGTERM, kill -9, a database that hangs) are in ``tests/faults/test_lifecycle.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tether.config import BudgetLimit, GatewayConfig
from tether.errors import StoreUnavailable
from tether.gateway import gateway as gateway_module
from tether.gateway.budget import BudgetScope, MemoryBudgetLedger, Reservation
from tether.gateway.budget import lease as budget_lease
from tether.gateway.budget.lease import LeasedBudgetLedger
from tether.gateway.gateway import CallContext, Gateway
from tether.gateway.journal import CostJournal
from tether.gateway.ledger import CostWriter
from tether.messages import Message, ModelRequest, Usage
from tether.pricing import CostRecord, PriceRef
from tether.server.proxy import create_app
from tether.store import TraceStore, open_store
from tether.testing import FunctionModel, text_response

T0 = datetime(2026, 11, 21, 12, tzinfo=UTC)
CENT = Decimal("0.01")
ADDRESS = "postgresql+psycopg://tether@db.internal:6543/prod_ledger"


def record(i: int = 0) -> CostRecord:
    return CostRecord(
        time_ns=time.time_ns(),
        route="support",
        deployment="gpt",
        provider="openai",
        model="gpt-4.1",
        agent="triage",
        key="ci-bot",
        run_id=f"run-{i}",
        usage=Usage(input_tokens=100 + i, output_tokens=20),
        cost_usd=Decimal("0.000360"),
        price_version="tether.toml",
    )


def rows(store: TraceStore) -> list[tuple[str, str]]:
    with store.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(sa.text("SELECT id, run_id FROM costs ORDER BY run_id"))]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    made = open_store(f"sqlite:///{tmp_path / 'store' / 't.db'}")
    yield made
    made.close()


# --- the cost journal ----------------------------------------------------------------------------------------


def test_a_journal_left_behind_is_adopted_and_stored_once(tmp_path: Path, store: TraceStore) -> None:
    directory = tmp_path / "journal"
    dead = CostJournal(directory)
    for i in range(3):
        dead.append(f"{i:032x}", record(i))
    # The process dies: its files stay, unlocked (closing the descriptors is what the kernel does on kill -9).
    for segment in list(dead._segments):
        os.close(segment.fd)
    (left,) = directory.glob("costs-*.jsonl")
    lines = left.read_bytes()

    for attempt in range(2):
        if attempt:  # a replay that died after its commit, before deleting the file: replayed again
            (directory / "costs-1-dead-1.jsonl").write_bytes(lines)
        writer = CostWriter(store, journal=CostJournal(directory))
        assert writer.replay() == 3
        assert writer.flush()
        writer.shutdown()
        assert [run for _, run in rows(store)] == ["run-0", "run-1", "run-2"]  # stored once
        assert list(directory.glob("costs-*")) == []  # stored: nothing left to replay
    assert {row_id for row_id, _ in rows(store)} == {f"{i:032x}" for i in range(3)}


def test_a_live_replicas_journal_is_never_taken_by_another(tmp_path: Path) -> None:
    live = CostJournal(tmp_path)
    live.append("a" * 32, record())
    other = CostJournal(tmp_path)  # a second replica on the same host gets files of its own
    assert other.adopt() == []
    assert set(live.files).isdisjoint(other.files)
    live.close()
    other.close()


def test_stored_lines_are_forgotten_and_unstored_ones_kept_for_the_next_start(
    tmp_path: Path, store: TraceStore
) -> None:
    journal = CostJournal(tmp_path / "j", segment_records=2)
    writer = CostWriter(store, journal=journal)
    for i in range(5):
        writer(record(i))
    assert journal.outstanding == 5 and len(journal.files) == 3  # rolled over every two lines
    assert writer.flush()
    assert journal.outstanding == 0 and len(journal.files) == 1  # the live file, truncated
    assert journal.files[0].stat().st_size == 0

    writer.ledger.write_rows = _fail  # type: ignore[method-assign]  # the database goes down
    writer(record(9))
    assert not writer.flush()
    writer.shutdown()  # the database never took it: its line stays on disk, unlocked
    assert len(list((tmp_path / "j").glob("costs-*.jsonl"))) == 1

    again = CostWriter(store, journal=CostJournal(tmp_path / "j"))
    assert again.replay() == 1
    assert again.flush()
    again.shutdown()
    assert [run for _, run in rows(store)] == [f"run-{i}" for i in (0, 1, 2, 3, 4, 9)]
    assert list((tmp_path / "j").glob("costs-*.jsonl")) == []


def _fail(rows: Sequence[object]) -> None:
    raise StoreUnavailable("database is down")


# --- spend the ledger cannot take is retried, never dropped -------------------------------------------------------


class Flaky(MemoryBudgetLedger):
    """A shared ledger whose settles fail ``failures`` times first (a database outage)."""

    def __init__(self, failures: int) -> None:
        super().__init__(clock=lambda: T0)
        self.failures = failures
        self.settles = 0

    async def settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        self.settles += 1
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable(f"cannot reach PostgreSQL at {ADDRESS}: connection refused")
        await super().settle(reservation, usd=usd, tokens=tokens)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (budget_lease, gateway_module):
        monkeypatch.setattr(module, "_SETTLE_RETRY_FIRST_S", 0.001)
        monkeypatch.setattr(module, "_SETTLE_RETRY_MAX_S", 0.005)


@pytest.mark.usefixtures("quick_retries")
async def test_a_leases_spend_is_retried_through_a_long_outage_until_recorded() -> None:
    inner = Flaky(failures=30)  # five attempts used to be all: then the spend was dropped
    ledger = LeasedBudgetLedger(inner, clock=lambda: T0)
    budget = BudgetScope("route", "support", BudgetLimit(usd=Decimal("10")))
    for _ in range(3):
        held = await ledger.reserve([budget], usd=CENT, tokens=1)
        await ledger.settle(held, usd=CENT, tokens=1)
    await ledger.flush()  # ends the lease and waits for its report, however many attempts it takes
    assert inner.settles == 31
    usage = await inner.usage(budget)
    assert (usage.spent_usd, usage.reserved_usd, usage.spent_tokens) == (3 * CENT, 0, 3)
    await ledger.aclose()


@pytest.mark.usefixtures("quick_retries")
async def test_a_calls_settle_the_ledger_refuses_is_retried_and_the_call_still_answers() -> None:
    config = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {"d": {"provider": "p", "model": "claude-sonnet-4-5"}},
            "routes": {"r": {"tiers": [["d"]], "budget": {"usd": 10}}},
        }
    )
    model = FunctionModel(
        lambda r: text_response("ok", usage=Usage(input_tokens=100, output_tokens=20), model=r.model),
        price_ref=PriceRef("anthropic", "claude-sonnet-4-5"),
    )
    inner = Flaky(failures=8)
    gateway = Gateway(config, models={"d": model}, budgets=inner)
    request = ModelRequest(model="", messages=(Message.user("hi"),), max_tokens=50)
    response = await gateway.complete(request, CallContext(route="r"))
    assert response.cost_usd is not None and response.cost_usd > 0
    budget = BudgetScope("route", "r", BudgetLimit(usd=Decimal("10")))
    for _ in range(200):
        if not gateway.unsettled:
            break
        await asyncio.sleep(0.01)
    usage = await inner.usage(budget)
    assert (usage.spent_usd, usage.reserved_usd) == (response.cost_usd, 0)
    await gateway.aclose()


# --- a store that hangs or fails: a quick 503 naming it, never its address -----------------------------------------


class Hanging(MemoryBudgetLedger):
    """A shared ledger on a database that accepts connections and never answers (or fails, naming itself)."""

    url = ADDRESS

    def __init__(self, *, hang: bool) -> None:
        super().__init__()
        self.hang = hang

    async def reserve(self, scopes: Sequence[BudgetScope], *, usd: Decimal, tokens: int) -> Reservation:
        if self.hang:
            await asyncio.Event().wait()
        raise StoreUnavailable(f"cannot reach PostgreSQL at {ADDRESS}: connection refused — check TETHER_DATABASE_URL")


@pytest.mark.parametrize("leased", [False, True], ids=["direct", "leased"])
@pytest.mark.parametrize("hang", [True, False], ids=["hangs", "refuses"])
async def test_a_budget_store_that_hangs_or_refuses_gets_a_quick_503_naming_it_without_its_address(
    hang: bool, leased: bool
) -> None:
    config = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {"d": {"provider": "p", "model": "claude-sonnet-4-5"}},
            "routes": {"r": {"tiers": [["d"]], "budget": {"usd": 10}}},
            "gateway": {"dependency_timeout_s": 0.2},
        }
    )
    shared = Hanging(hang=hang)
    gateway = Gateway(config, budgets=LeasedBudgetLedger(shared) if leased else shared)
    app = create_app(gateway, keys=None, require_keys=False)
    body = {"model": "r", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            for path in ("/v1/chat/completions", "/v1/messages"):
                started = time.monotonic()
                answer = await client.post(path, json=body)
                took = time.monotonic() - started
                assert answer.status_code == 503
                assert took < 1.5
                message = answer.json()["error"]["message"]
                assert "the budget store (postgresql)" in message
                assert ("did not answer within 0.2 s" in message) is hang
                for part in ("db.internal", "6543", "tether@", "prod_ledger"):
                    assert part not in answer.text
    finally:
        await gateway.aclose()
