"""The demo's gateway: every model call of the on-call agent goes through it.

Two Sonnet deployments share the first tier (one of them flaky, with injected
503/529 errors, so the demo shows retries, fallbacks and a circuit breaker
opening), and Haiku is the fallback tier. The on-call agent has a daily budget.
All three are the simulated model, priced as the real models they name.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tether.config import GatewayConfig
from tether.gateway.budget import BudgetLedger
from tether.gateway.gateway import Gateway
from tether.models.scenario import Scenario
from tether.models.sim import SimModel
from tether.pricing import CostRecord

__all__ = ["DEMO_GATEWAY", "ROUTE", "demo_gateway"]

ROUTE = "oncall"

DEMO_GATEWAY = GatewayConfig.model_validate(
    {
        "providers": {"sim": {"kind": "sim"}},
        "deployments": {
            "sonnet-a": {"provider": "sim", "model": "claude-sonnet-4-5", "weight": 3},
            "sonnet-b": {
                "provider": "sim",
                "model": "claude-sonnet-4-5",
                "weight": 1,
                "faults": {"error_rate": 0.7, "error_statuses": [503, 529], "retry_after_s": 0.05, "seed": 11},
                "breaker": {"consecutive_failures": 2, "open_s": 0.5},
            },
            "haiku": {"provider": "sim", "model": "claude-haiku-4-5"},
        },
        "routes": {
            ROUTE: {
                "tiers": [["sonnet-a", "sonnet-b"], ["haiku"]],
                "retry": {"max_retries": 1, "base_delay_s": 0.02, "max_delay_s": 0.2, "max_retry_after_s": 0.5},
                "budget": {"usd": "2.00", "period": "day"},
            }
        },
        "budgets": {"agents": {"oncall": {"usd": "1.00", "period": "day"}}},
    }
)


def demo_gateway(
    scenario: Scenario,
    *,
    seed: int,
    budgets: BudgetLedger,
    cost_sink: Callable[[CostRecord], None] | None = None,
) -> Gateway:
    """One trial's gateway: its deployments play the scenario with their own seeds."""
    models = {
        # Different seeds per deployment: a fallback is a different server, not a replay of the failure.
        name: SimModel(DEMO_GATEWAY.deployments[name].model, scenario=scenario, seed=seed * 1000 + i)
        for i, name in enumerate(DEMO_GATEWAY.deployments)
    }
    return Gateway(DEMO_GATEWAY, models=models, budgets=budgets, cost_sink=cost_sink, rng=random.Random(seed))
