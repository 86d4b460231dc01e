"""Two gateway replicas sharing one budget and one rate limit, one killed mid-load and restarted — real processes.

Two ``tether gateway serve`` children on the same PostgreSQL schema (budgets in the database) and the same
private ``redis-server`` (rate limits) serve one virtual key with a small USD budget. About 200 calls, 32 at a
time, go alternately to both; replica A is ``kill -9``-ed once 60 have been answered, restarted (same
directory, so its journal is replayed), and the rest go to both again. With an honest provider the key's
recorded spend stays within its budget, the calls beyond it are refused 402, and every 200 a client got has
its row in ``costs``. With a provider that bills 5x what it was asked for, the spend overshoots by a bounded
ratio and every overshoot is recorded as a ``budget_overrun`` incident and counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from tests.faults._support import GatewayProcess, RedisServer, Upstream, run_tether, tether_env, wait_until

pytestmark = pytest.mark.postgres

PROVIDER_KEY = "two-replicas-provider-key-0123456789"
BUDGET_USD = Decimal("0.006")  # ~90 calls at the honest price (~64 micro-dollars a call): A dies with some left
CALLS, CONCURRENCY, KILL_AFTER = 200, 32, 60
BODY = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def config(upstream: Upstream, redis_url: str) -> dict[str, Any]:
    return {
        "providers": {"oai": {"kind": "openai", "base_url": f"{upstream.url}/v1", "api_key_env": "FAULT_OPENAI_KEY"}},
        "deployments": {"gpt": {"provider": "oai", "model": "gpt-4.1"}},
        "routes": {"fast": {"tiers": [["gpt"]], "retry": {"max_retries": 0}}},
        "prices": {"gpt-4.1": {"input_per_mtok": 2, "output_per_mtok": 8}},
        "gateway": {"redis_url": redis_url, "budgets": "database", "stale_reservation_s": 2.0},
    }


def scalar(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(sql)).scalar() or 0)


class Load:
    """The calls' outcomes: HTTP status (0: the connection died) per replica."""

    def __init__(self, secret: str) -> None:
        self.headers = {"authorization": f"Bearer {secret}"}
        self.outcomes: list[tuple[str, int, str]] = []  # (replica, status, error code)

    @property
    def answered(self) -> int:
        return sum(1 for _, status, _ in self.outcomes if status)

    def count(self, status: int, replica: str | None = None) -> int:
        return sum(1 for r, s, _ in self.outcomes if s == status and (replica is None or r == replica))

    async def run(self, replicas: dict[str, GatewayProcess], calls: range, on_progress: Any = None) -> None:
        names = list(replicas)
        gate = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(timeout=20) as client:

            async def one(i: int) -> None:
                name = names[i % len(names)]
                async with gate:
                    try:
                        reply = await client.post(
                            f"{replicas[name].url}/v1/chat/completions", json=BODY, headers=self.headers
                        )
                    except httpx.HTTPError:
                        self.outcomes.append((name, 0, "connection"))
                    else:
                        code = ""
                        if reply.status_code != 200:
                            try:
                                code = str(orjson.loads(reply.content)["error"].get("code"))
                            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                                code = reply.text[:80]
                        self.outcomes.append((name, reply.status_code, code))
                    if on_progress is not None:
                        await on_progress()

            await asyncio.gather(*(one(i) for i in calls))


@pytest.mark.parametrize("bill_factor", [1.0, 5.0], ids=["honest", "over-billing"])
def test_two_replicas_share_a_key_budget_through_a_kill_9_and_a_restart(
    tmp_path: Path, upstream: Upstream, redis_server: RedisServer, pg_url: str, bill_factor: float
) -> None:
    upstream.bill_factor = bill_factor
    upstream.latency_s = 0.02  # calls overlap, so the replicas race for the same budget
    made = run_tether(
        ["keys", "create", "shared-agent", "--budget-usd", str(BUDGET_USD), "--rpm", "100000", "--json"],
        env=tether_env(pg_url),
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    secret = str(orjson.loads(made.stdout)["secret"])

    replicas = {
        name: GatewayProcess(
            tmp_path / f"gw-{name}",
            config(upstream, redis_server.url),
            database_url=pg_url,
            env={"FAULT_OPENAI_KEY": PROVIDER_KEY},
        )
        for name in ("a", "b")
    }
    engine = sa.create_engine(pg_url)
    try:
        for gateway in replicas.values():
            gateway.start()
        load = Load(secret)
        killed_at: list[int] = []

        async def kill_a_at_60() -> None:
            if not killed_at and load.answered >= KILL_AFTER:
                killed_at.extend((load.answered, load.count(200)))
                await asyncio.to_thread(replicas["a"].kill)

        first = CALLS // 2
        asyncio.run(load.run(replicas, range(first), kill_a_at_60))
        assert killed_at, f"only {load.answered} calls were answered before the kill"
        before_restart = len(load.outcomes)

        replicas["a"].start()  # the same directory: its journal of unstored cost rows is replayed
        asyncio.run(load.run(replicas, range(first, CALLS)))
        after = load.outcomes[before_restart:]

        ok = load.count(200)
        statuses = Counter(status for _, status, _ in load.outcomes)
        refusals = Counter(code for _, status, code in load.outcomes if status not in (0, 200))
        # Every 200 has its cost row (the killed replica's journal is replayed at its restart).
        rows = wait_until(
            lambda: (n := scalar(engine, "SELECT count(*) FROM costs")) >= ok and n,
            15,
            f"a costs row for each of the {ok} answered calls",
        )
        spent = Decimal(scalar(engine, "SELECT coalesce(sum(cost_nanousd), 0) FROM costs")) / 1_000_000_000
        ratio = spent / BUDGET_USD
        overruns = scalar(engine, "SELECT count(*) FROM incidents WHERE kind = 'budget_overrun'")
        metric = sum(
            float(line.rsplit(" ", 1)[1])
            for gateway in replicas.values()
            for line in httpx.get(f"{gateway.url}/metrics", timeout=5).text.splitlines()
            if line.startswith("tether_gateway_budget_overruns_total")
        )
        print(
            f"\n[bill_factor {bill_factor}] spend/budget {ratio:.3f} (${spent} of ${BUDGET_USD}); "
            f"statuses {dict(statuses)}, refusals {dict(refusals)}; "
            f"A killed after {killed_at[0]} answered ({killed_at[1]} of them 200); "
            f"200s {ok}, costs rows {rows} (missing {max(0, ok - rows)}, extra {rows - ok}); "
            f"overrun incidents {overruns}, overruns in /metrics (A's since its restart) {metric:g}"
        )

        assert ok > 0 and rows >= ok
        # The restarted replica answers (by now, mostly a refusal: the budget is spent).
        assert any(replica == "a" and status for replica, status, _ in after), after
        assert 0 not in {status for _, status, _ in after}, after  # nothing dies after the restart
        # Calls beyond the budget are refused for the budget, and nothing else refuses them.
        assert refusals["budget_exceeded"] > 0 and statuses[402] == refusals["budget_exceeded"], refusals
        assert set(statuses) <= {0, 200, 402}, statuses
        if bill_factor == 1.0:
            assert spent <= BUDGET_USD, f"spend/budget {ratio:.3f}"
            assert overruns == 0 and metric == 0
        else:
            # Each call is reserved at its estimate and settled at what it was billed: the overshoot is
            # bounded by the calls in flight when the budget ran out, and each is an incident.
            assert ratio < 2, f"spend/budget {ratio:.3f}"
            assert overruns > 0 and metric > 0
    finally:
        for gateway in replicas.values():
            gateway.kill()
        engine.dispose()
