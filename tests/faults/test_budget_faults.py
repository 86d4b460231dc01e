"""Budgets under faults, with real processes: a Redis restarted empty never refills a budget.

``tether gateway serve`` runs as a child process on a private ``redis-server``
(rate limits, and budgets when asked for) and a SQLite store, in front of the
mock provider. A route budget is spent until the gateway refuses (402); then
Redis is restarted, with or without its data, and no further call may be
answered 200.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.faults._support import GatewayProcess, RedisServer, Upstream, wait_until

KEY = "fault-budget-provider-key-0123456789"
BUDGET = Decimal("0.001")
# The price the config gives gpt-4.1 (USD per million tokens).
INPUT_PER_MTOK, OUTPUT_PER_MTOK = Decimal(2), Decimal(8)
BODY = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def config(upstream: Upstream, redis_url: str, **gateway: Any) -> dict[str, Any]:
    return {
        "providers": {"oai": {"kind": "openai", "base_url": f"{upstream.url}/v1", "api_key_env": "FAULT_OPENAI_KEY"}},
        "deployments": {"gpt": {"provider": "oai", "model": "gpt-4.1"}},
        "routes": {
            "fast": {
                "tiers": [["gpt"]],
                "budget": {"usd": float(BUDGET)},
                "rate_limit": {"rpm": 100000},  # in Redis: the gateway keeps using it through the restart
                "retry": {"max_retries": 0},
            }
        },
        "prices": {"gpt-4.1": {"input_per_mtok": 2, "output_per_mtok": 8}},
        "gateway": {"redis_url": redis_url, **gateway},
    }


def gateway_process(
    tmp_path: Path, upstream: Upstream, redis_url: str, sqlite_url: str, **gateway: Any
) -> GatewayProcess:
    return GatewayProcess(
        tmp_path / "gw",
        config(upstream, redis_url, **gateway),
        database_url=sqlite_url,
        env={"FAULT_OPENAI_KEY": KEY},
        args=["--no-auth"],
    )


class Spend:
    """What the answered calls cost, from the usage each 200 carried (the provider's own bill)."""

    def __init__(self) -> None:
        self.usd = Decimal(0)
        self.statuses: list[int] = []

    def call(self, gateway: GatewayProcess) -> httpx.Response:
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY, timeout=10)
        self.statuses.append(reply.status_code)
        if reply.status_code == 200:
            usage = reply.json()["usage"]
            self.usd += (
                Decimal(usage["prompt_tokens"]) * INPUT_PER_MTOK + Decimal(usage["completion_tokens"]) * OUTPUT_PER_MTOK
            ) / 1_000_000
        return reply

    def until_refused(self, gateway: GatewayProcess) -> httpx.Response:
        for _ in range(100):
            reply = self.call(gateway)
            if reply.status_code != 200:
                return reply
        raise AssertionError(f"a ${BUDGET} budget never ran out: ${self.usd} spent")


def test_budgets_in_a_redis_without_persistence_refuse_to_start(
    tmp_path: Path, upstream: Upstream, sqlite_url: str
) -> None:
    with RedisServer(tmp_path / "redis") as redis_server:
        gateway = gateway_process(tmp_path, upstream, redis_server.url, sqlite_url, budgets="redis")
        gateway.start(wait=False)
        try:
            assert gateway.wait(90) == 2  # start-up on a loaded machine can take a while
        finally:
            gateway.kill()
        log = gateway.log
        assert "no persistence" in log and "appendonly yes" in log, log[-2000:]
        assert 'budgets = "database"' in log


def test_a_redis_restarted_empty_does_not_refill_budgets_kept_in_the_database(
    tmp_path: Path, upstream: Upstream, sqlite_url: str
) -> None:
    with RedisServer(tmp_path / "redis") as redis_server:
        gateway = gateway_process(tmp_path, upstream, redis_server.url, sqlite_url)  # budgets: the default
        with gateway:
            spend = Spend()
            refused = spend.until_refused(gateway)
            assert refused.status_code == 402, refused.text
            before = spend.usd
            redis_server.restart()  # no persistence: it comes back empty
            for _ in range(10):
                reply = spend.call(gateway)
                assert reply.status_code != 200, f"a budget was refilled by a Redis restart: ${spend.usd} spent"
            # The gateway still works through Redis (rate limits) once it is back: budgeted calls are refused.
            assert spend.statuses[-1] == 402, spend.statuses
        print(f"\nspend/budget before the Redis restart {before / BUDGET:.3f}, after {spend.usd / BUDGET:.3f}")
        assert spend.usd <= BUDGET


def test_budgets_in_a_persistent_redis_survive_a_restart_and_are_rebuilt_when_it_loses_them(
    tmp_path: Path, upstream: Upstream, sqlite_url: str
) -> None:
    with RedisServer(tmp_path / "redis", persistent=True) as redis_server:
        gateway = gateway_process(tmp_path, upstream, redis_server.url, sqlite_url, budgets="redis")
        with gateway:
            spend = Spend()
            assert spend.until_refused(gateway).status_code == 402
            before = spend.usd

            redis_server.restart()  # its append-only file brings every counter back
            reply = spend.call(gateway)
            assert reply.status_code == 402, reply.text

            redis_server.restart(empty=True)  # the data is gone (a lost disk, a fail-over to an empty replica)
            reply = spend.call(gateway)
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"]["code"] == "budget_unavailable"
            assert "rebuilt from the cost ledger" in reply.json()["error"]["message"]
            # Fails closed until the counters are rebuilt from the cost ledger; then the budget is still spent.
            rebuilt = wait_until(
                lambda: (r := spend.call(gateway)).status_code != 503 and r,
                timeout_s=15,
                what="the budget counters to be rebuilt",
            )
            assert rebuilt.status_code == 402, rebuilt.text
            assert 200 not in spend.statuses[spend.statuses.index(402) :], spend.statuses
        print(f"\nspend/budget before the Redis restarts {before / BUDGET:.3f}, after {spend.usd / BUDGET:.3f}")
        assert spend.usd <= BUDGET
