"""Token and dollar limits per run, and what a loop wasted."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tether import semconv as sc
from tether.config import GatewayConfig
from tether.gateway.gateway import Gateway
from tether.messages import StopReason, Usage
from tether.pricing import PriceRef
from tether.runtime import Agent, Limits
from tether.runtime.tools import tool
from tether.testing import FunctionModel, ScriptedModel, SpanCapture, text_response, tool_response


@tool
def look(thing: str) -> str:
    """Look at a thing."""
    return f"{thing}: fine"


def busy_model() -> FunctionModel:
    """Asks for a new look every turn, 1,000 tokens a turn."""
    turns = iter(range(100))
    return FunctionModel(
        lambda request: tool_response(
            ("look", {"thing": f"t{next(turns)}"}), usage=Usage(input_tokens=900, output_tokens=100)
        )
    )


def test_a_run_stops_once_it_has_used_its_tokens() -> None:
    result = Agent("a", busy_model(), tools=[look], limits=Limits(max_tokens=3_500)).run_sync("go")
    assert result.stop_reason is StopReason.BUDGET_EXCEEDED
    assert result.turns == 4 and result.usage.total_tokens == 4_000  # checked before each call: 3,000 < 3,500
    assert "max_tokens=3,500" in (result.error or "")


def test_a_run_stops_once_it_has_spent_its_dollars() -> None:
    model = busy_model()
    model.price_ref = PriceRef("anthropic", "claude-sonnet-4-5")  # $3/M in, $15/M out: $0.0042 a turn
    result = Agent("a", model, tools=[look], limits=Limits(max_cost_usd=Decimal("0.01"))).run_sync("go")
    assert result.stop_reason is StopReason.BUDGET_EXCEEDED
    assert result.turns == 3 and result.cost_usd == Decimal("0.0126")


def test_through_a_gateway_route_a_call_that_might_cross_the_run_budget_is_never_made() -> None:
    cfg = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {"a": {"provider": "p", "model": "claude-sonnet-4-5"}},
            "routes": {"r": {"tiers": [["a"]]}},
        }
    )
    calls: list[int] = []

    def answer(request: object) -> object:
        calls.append(1)
        return tool_response(("look", {"thing": f"t{len(calls)}"}), usage=Usage(input_tokens=900, output_tokens=100))

    sonnet = PriceRef("anthropic", "claude-sonnet-4-5")
    gateway = Gateway(cfg, models={"a": FunctionModel(answer, price_ref=sonnet)})  # type: ignore[arg-type]
    agent = Agent("a", gateway.model("r"), tools=[look], limits=Limits(max_cost_usd=Decimal("0.05")), max_tokens=1000)
    result = agent.run_sync("go")

    # Each call reserves its worst case (~1.4k input tokens as cache writes + 1,000 output) before it is made.
    assert result.stop_reason is StopReason.BUDGET_EXCEEDED
    assert "budget run:" in (result.error or "")
    assert result.cost_usd is not None and result.cost_usd <= Decimal("0.05")
    assert len(calls) == result.turns - 1  # the refused call never reached the model


def test_a_loop_records_the_tokens_and_dollars_it_wasted() -> None:
    same = tool_response(("look", {"thing": "x"}), usage=Usage(input_tokens=900, output_tokens=100))
    capture = SpanCapture()
    model = ScriptedModel([same, same, same, text_response("never")])
    model.price_ref = PriceRef("anthropic", "claude-sonnet-4-5")
    result = Agent("a", model, tools=[look], tracer=capture.tracer, limits=Limits(max_repeated_tool_calls=3)).run_sync(
        "go"
    )
    assert result.stop_reason is StopReason.LOOP_DETECTED
    root = dict(next(s for s in capture.spans if s.name.startswith("invoke_agent")).attributes or {})
    assert root[sc.TETHER_LOOP_WASTED_TOKENS] == 2_000  # the two repeats after the first call
    assert root[sc.TETHER_LOOP_WASTED_COST_USD] == pytest.approx(0.0084)
    assert "2,000 tokens" in (result.error or "")
