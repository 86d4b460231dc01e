"""The gateway: routing, fallbacks, retries, breakers, budgets, limits, cache, cost — in process."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tether import semconv as sc
from tether.config import GatewayConfig, load_settings
from tether.errors import (
    BudgetExceeded,
    ConfigError,
    ModelHTTPError,
    NoDeploymentAvailable,
    RateLimited,
    StreamInterrupted,
)
from tether.gateway.budget import BudgetScope, MemoryBudgetLedger
from tether.gateway.budget.lease import LeasedBudgetLedger
from tether.gateway.gateway import CallContext, Gateway
from tether.messages import Message, ModelRequest, ModelResponse, StopReason, Usage
from tether.pricing import PriceRef
from tether.runtime import Agent
from tether.testing import FunctionModel, SpanCapture, text_response

SONNET = PriceRef("anthropic", "claude-sonnet-4-5")
HAIKU = PriceRef("anthropic", "claude-haiku-4-5")


def request(text: str = "hello", *, max_tokens: int = 100, temperature: float | None = None) -> ModelRequest:
    return ModelRequest(model="", messages=(Message.user(text),), max_tokens=max_tokens, temperature=temperature)


def answering(text: str = "ok", *, usage: Usage | None = None, ref: PriceRef | None = SONNET) -> FunctionModel:
    return FunctionModel(
        lambda r: text_response(text, usage=usage or Usage(input_tokens=100, output_tokens=20), model=r.model),
        price_ref=ref,
    )


def failing(status: int, *, retry_after: float | None = None, ref: PriceRef | None = SONNET) -> FunctionModel:
    def fail(r: ModelRequest) -> ModelResponse:
        raise ModelHTTPError(status, '{"error": "nope"}', provider="test", retry_after=retry_after)

    return FunctionModel(fail, price_ref=ref)


def config(routes: dict[str, Any], deployments: list[str], **extra: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {name: {"provider": "p", "model": "claude-sonnet-4-5"} for name in deployments},
            "routes": routes,
            **extra,
        }
    )


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def make_gateway(sleeps: Sleeps) -> AsyncIterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def make(cfg: GatewayConfig, models: dict[str, FunctionModel], **kwargs: Any) -> Gateway:
        gateway = Gateway(cfg, models=models, rng=random.Random(1), sleep=sleeps, **kwargs)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.aclose()


async def test_a_tier_splits_traffic_by_weight(make_gateway: Callable[..., Gateway]) -> None:
    cfg = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {
                "a": {"provider": "p", "model": "claude-sonnet-4-5", "weight": 3},
                "b": {"provider": "p", "model": "claude-sonnet-4-5", "weight": 1},
            },
            "routes": {"r": {"tiers": [["a", "b"]]}},
        }
    )
    a, b = answering("a"), answering("b")
    gateway = make_gateway(cfg, {"a": a, "b": b})
    answers = Counter([(await gateway.complete(request(), CallContext(route="r"))).text for _ in range(2000)])
    assert 0.70 < answers["a"] / 2000 < 0.80


async def test_a_failing_tier_falls_back_with_fresh_retries_per_deployment(
    make_gateway: Callable[..., Gateway], sleeps: Sleeps
) -> None:
    cfg = config({"r": {"tiers": [["primary"], ["backup"]], "retry": {"max_retries": 2}}}, ["primary", "backup"])
    primary, backup = failing(503), answering("from backup")
    gateway = make_gateway(cfg, {"primary": primary, "backup": backup})
    capture = SpanCapture()
    with capture.tracer.start_as_current_span("chat"):
        response = await gateway.complete(request(), CallContext(route="r"))
    assert response.text == "from backup"
    assert len(primary.requests) == 3  # first attempt + 2 retries
    assert len(backup.requests) == 1
    assert len(sleeps.delays) == 2
    (span,) = capture.spans
    assert span.attributes is not None
    assert span.attributes[sc.TETHER_DEPLOYMENT] == "backup"
    assert span.attributes[sc.TETHER_ROUTE_TIER] == 1
    assert "primary: ModelHTTPError" in span.attributes[sc.TETHER_FALLBACKS][0]  # type: ignore[index]
    capture.shutdown()


async def test_retry_after_is_honoured(make_gateway: Callable[..., Gateway], sleeps: Sleeps) -> None:
    calls = iter([ModelHTTPError(429, "slow down", provider="test", retry_after=3.0)])

    def flaky(r: ModelRequest) -> ModelResponse:
        error = next(calls, None)
        if error is not None:
            raise error
        return text_response("ok")

    cfg = config({"r": {"tiers": [["a"]]}}, ["a"])
    gateway = make_gateway(cfg, {"a": FunctionModel(flaky, price_ref=SONNET)})
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "ok"
    assert sleeps.delays and sleeps.delays[0] >= 3.0


async def test_a_request_error_is_raised_at_once_without_fallback(make_gateway: Callable[..., Gateway]) -> None:
    cfg = config({"r": {"tiers": [["a"], ["b"]]}}, ["a", "b"])
    bad, backup = failing(400), answering()
    gateway = make_gateway(cfg, {"a": bad, "b": backup})
    with pytest.raises(ModelHTTPError) as err:
        await gateway.complete(request(), CallContext(route="r"))
    assert err.value.status == 400
    assert len(bad.requests) == 1 and not backup.requests


async def test_when_every_deployment_fails_the_error_lists_each(make_gateway: Callable[..., Gateway]) -> None:
    cfg = config({"r": {"tiers": [["a"], ["b"]], "retry": {"max_retries": 0}}}, ["a", "b"])
    gateway = make_gateway(cfg, {"a": failing(500), "b": failing(529)})
    with pytest.raises(NoDeploymentAvailable) as err:
        await gateway.complete(request(), CallContext(route="r"))
    assert [a.split(":")[0] for a in err.value.attempts] == ["a", "b"]


async def test_an_open_breaker_skips_its_deployment(make_gateway: Callable[..., Gateway]) -> None:
    cfg = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {
                "a": {"provider": "p", "model": "claude-sonnet-4-5", "breaker": {"consecutive_failures": 2}},
                "b": {"provider": "p", "model": "claude-sonnet-4-5"},
            },
            "routes": {"r": {"tiers": [["a"], ["b"]], "retry": {"max_retries": 0}}},
        }
    )
    broken, backup = failing(503), answering()
    gateway = make_gateway(cfg, {"a": broken, "b": backup})
    for _ in range(5):
        await gateway.complete(request(), CallContext(route="r"))
    assert len(broken.requests) == 2  # after two failures the circuit opened and "a" was skipped
    assert len(backup.requests) == 5
    assert gateway.breaker_changes[0][0] == "a"
    assert gateway.breaker_changes[0][2].value == "open"


async def test_injected_faults_drive_the_fallback(make_gateway: Callable[..., Gateway]) -> None:
    cfg = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {
                "chaos": {"provider": "p", "model": "claude-sonnet-4-5", "faults": {"error_rate": 1.0}},
                "steady": {"provider": "p", "model": "claude-sonnet-4-5"},
            },
            "routes": {"r": {"tiers": [["chaos"], ["steady"]], "retry": {"max_retries": 0}}},
        }
    )
    gateway = make_gateway(cfg, {"chaos": answering("chaos"), "steady": answering("steady")})
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "steady"


async def test_rules_pick_the_starting_tier(make_gateway: Callable[..., Gateway]) -> None:
    cfg = config(
        {
            "r": {
                "tiers": [["big"], ["mid"], ["small"]],
                "rules": [{"agent": "triage", "tier": 2}, {"prompt_tokens_over": 1000, "tier": 1}],
            }
        },
        ["big", "mid", "small"],
    )
    gateway = make_gateway(cfg, {"big": answering("big"), "mid": answering("mid"), "small": answering("small")})
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "big"
    assert (await gateway.complete(request(), CallContext(route="r", agent="triage"))).text == "small"
    assert (await gateway.complete(request("x" * 8000), CallContext(route="r"))).text == "mid"


async def test_a_burning_budget_steps_down_a_tier(make_gateway: Callable[..., Gateway]) -> None:
    cfg = config(
        {
            "r": {
                "tiers": [["big"], ["small"]],
                "budget": {"usd": 1},
                "step_down": [{"budget_burn_over": 0.5}],
            }
        },
        ["big", "small"],
    )
    ledger = MemoryBudgetLedger()
    now = [100.0]
    gateway = make_gateway(
        cfg, {"big": answering("big"), "small": answering("small")}, budgets=ledger, clock=lambda: now[0]
    )
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "big"
    scope = BudgetScope("route", "r", cfg.routes["r"].budget)  # type: ignore[arg-type]
    reservation = await ledger.reserve([scope], usd=Decimal("0.6"), tokens=0)
    await ledger.settle(reservation, usd=Decimal("0.6"), tokens=0)
    # The burn is read at most once per budget_burn_refresh_s (1 s by default): not yet seen...
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "big"
    # ...and seen once the read is that old.
    now[0] += 1.0
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "small"


async def test_the_burn_is_refreshed_in_the_background_before_it_is_stale(
    make_gateway: Callable[..., Gateway],
) -> None:
    cfg = config(
        {"r": {"tiers": [["big"], ["small"]], "budget": {"usd": 1}, "step_down": [{"budget_burn_over": 0.5}]}},
        ["big", "small"],
    )
    ledger = MemoryBudgetLedger()
    now = [100.0]
    gateway = make_gateway(
        cfg, {"big": answering("big"), "small": answering("small")}, budgets=ledger, clock=lambda: now[0]
    )
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "big"
    scope = BudgetScope("route", "r", cfg.routes["r"].budget)  # type: ignore[arg-type]
    await ledger.settle(await ledger.reserve([scope], usd=Decimal("0.6"), tokens=0), usd=Decimal("0.6"), tokens=0)
    now[0] += 0.6  # past half the refresh interval: this call uses the old read and refreshes it behind
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "big"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert (await gateway.complete(request(), CallContext(route="r"))).text == "small"


async def test_a_budget_fails_closed_and_never_overspends_under_concurrency(
    make_gateway: Callable[..., Gateway],
) -> None:
    # max cost per call: 100 tokens of input as cache write ($3.75/M) + 100 output ($15/M) ~= $0.0019
    cfg = config({"r": {"tiers": [["a"]], "budget": {"usd": "0.02"}}}, ["a"])
    ledger = MemoryBudgetLedger()
    gateway = make_gateway(cfg, {"a": answering(usage=Usage(input_tokens=100, output_tokens=100))}, budgets=ledger)
    results = await asyncio.gather(
        *(gateway.complete(request("x" * 300), CallContext(route="r")) for _ in range(100)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    served = [r for r in results if isinstance(r, ModelResponse)]
    assert refused and served and len(refused) + len(served) == 100
    usage = await ledger.usage(BudgetScope("route", "r", cfg.routes["r"].budget))  # type: ignore[arg-type]
    assert usage.spent_usd + usage.reserved_usd <= Decimal("0.02")
    assert usage.spent_usd == sum((r.cost_usd or Decimal(0) for r in served), Decimal(0))


async def test_an_agent_stops_with_budget_exceeded(make_gateway: Callable[..., Gateway]) -> None:
    cfg = config({"r": {"tiers": [["a"]]}}, ["a"], budgets={"agents": {"spender": {"usd": "0.001"}}})
    gateway = make_gateway(cfg, {"a": answering()})
    capture = SpanCapture()
    result = await Agent("spender", gateway.model("r"), tracer=capture.tracer).run("x" * 4000)
    assert result.stop_reason is StopReason.BUDGET_EXCEEDED
    assert "budget agent:spender exceeded" in (result.error or "")
    capture.shutdown()


def test_a_budgeted_route_with_an_unpriced_model_is_a_config_error() -> None:
    cfg = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {"a": {"provider": "p", "model": "my-finetune"}},
            "routes": {"r": {"tiers": [["a"]], "budget": {"usd": 5}}},
        }
    )
    with pytest.raises(ConfigError, match=r'prices\."my-finetune"'):
        Gateway(cfg, models={"a": answering(ref=PriceRef("anthropic", "my-finetune"))})


async def test_a_configured_price_is_used_for_unknown_models(make_gateway: Callable[..., Gateway]) -> None:
    cfg = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {"a": {"provider": "p", "model": "my-finetune"}},
            "routes": {"r": {"tiers": [["a"]], "budget": {"usd": 5}}},
            "prices": {"my-finetune": {"input_per_mtok": 1, "output_per_mtok": 2}},
        }
    )
    gateway = make_gateway(
        cfg, {"a": answering(usage=Usage(input_tokens=1_000_000, output_tokens=1_000_000), ref=None)}
    )
    response = await gateway.complete(request(), CallContext(route="r"))
    assert response.cost_usd == Decimal(3)


async def test_rate_limits_refuse_past_rpm(make_gateway: Callable[..., Gateway]) -> None:
    cfg = config({"r": {"tiers": [["a"]], "rate_limit": {"rpm": 2}}}, ["a"])
    gateway = make_gateway(cfg, {"a": answering()})
    await gateway.complete(request(), CallContext(route="r"))
    await gateway.complete(request(), CallContext(route="r"))
    with pytest.raises(RateLimited) as err:
        await gateway.complete(request(), CallContext(route="r"))
    assert err.value.retry_after > 0


async def test_the_response_cache_serves_identical_deterministic_requests(
    make_gateway: Callable[..., Gateway],
) -> None:
    cfg = config({"r": {"tiers": [["a"]], "response_cache": True}}, ["a"])
    model = answering()
    gateway = make_gateway(cfg, {"a": model})
    first = await gateway.complete(request(temperature=0), CallContext(route="r"))
    second = await gateway.complete(request(temperature=0), CallContext(route="r"))
    await gateway.complete(request(), CallContext(route="r"))  # not deterministic: never cached
    await gateway.complete(request(), CallContext(route="r"))
    assert len(model.requests) == 3
    assert first.cost_usd and first.cost_usd > 0
    assert second.cost_usd == 0


async def test_a_request_marked_cache_bypass_is_never_served_from_the_response_cache(
    make_gateway: Callable[..., Gateway],
) -> None:
    cfg = config({"r": {"tiers": [["a"]], "response_cache": True}}, ["a"])
    model = answering()
    gateway = make_gateway(cfg, {"a": model})
    bypass = request(temperature=0).model_copy(update={"metadata": {"cache": "bypass"}})
    await gateway.complete(request(temperature=0), CallContext(route="r"))
    await gateway.complete(bypass, CallContext(route="r"))  # eval trials must be independent
    await gateway.complete(bypass, CallContext(route="r"))
    assert len(model.requests) == 3


async def test_a_cut_stream_is_billed_for_what_it_used(make_gateway: Callable[..., Gateway]) -> None:
    partial = Usage(input_tokens=1000, output_tokens=50)

    def cut(r: ModelRequest) -> ModelResponse:
        raise StreamInterrupted("cut", provider="test", partial_text="The", usage=partial)

    cfg = config({"r": {"tiers": [["a"]], "budget": {"usd": 10}, "retry": {"max_retries": 0}}}, ["a"])
    ledger = MemoryBudgetLedger()
    gateway = make_gateway(cfg, {"a": FunctionModel(cut, price_ref=SONNET)}, budgets=ledger)
    with pytest.raises(NoDeploymentAvailable):
        await gateway.complete(request(), CallContext(route="r"))
    usage = await ledger.usage(BudgetScope("route", "r", cfg.routes["r"].budget))  # type: ignore[arg-type]
    assert usage.spent_usd == Decimal("0.00375")  # 1000 x $3/M + 50 x $15/M
    assert usage.reserved_usd == 0


async def test_agent_spans_carry_the_routing_decision(make_gateway: Callable[..., Gateway]) -> None:
    cfg = config({"r": {"tiers": [["a"], ["b"]], "retry": {"max_retries": 0}}}, ["a", "b"])
    gateway = make_gateway(cfg, {"a": failing(503), "b": answering(ref=HAIKU)})
    capture = SpanCapture()
    result = await Agent("routed", gateway.model("r"), tracer=capture.tracer).run("hi")
    (chat,) = capture.by_operation(sc.OP_CHAT)
    attrs = chat.attributes or {}
    assert attrs[sc.TETHER_ROUTE] == "r" and attrs[sc.TETHER_DEPLOYMENT] == "b"
    # priced at the deployment that answered: 100 in x $1/M + 20 out x $5/M (Haiku 4.5)
    assert result.cost_usd == Decimal("0.0002")
    capture.shutdown()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[deployments.a]\nprovider = "nope"\nmodel = "m"\n', "[deployments.a] provider 'nope' is not defined"),
        (
            '[providers.p]\nkind = "sim"\n[deployments.a]\nprovider = "p"\nmodel = "m"\n'
            '[routes.r]\ntiers = [["a", "b"]]\n',
            "[routes.r] tier 0 names deployment 'b', which is not defined",
        ),
        (
            '[providers.p]\nkind = "sim"\n[deployments.a]\nprovider = "p"\nmodel = "m"\n'
            '[routes.r]\ntiers = [["a"]]\nrules = [{agent = "x", tier = 3}]\n',
            "rule starts at tier 3 but the route has 1 tiers",
        ),
    ],
)
def test_config_mistakes_are_named(toml: str, message: str) -> None:
    Path("tether.toml").write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in str(err.value)


def test_an_unknown_provider_kind_is_refused_when_the_gateway_is_built() -> None:
    cfg = GatewayConfig.model_validate({"providers": {"p": {"kind": "antropic"}}})
    with pytest.raises(
        ConfigError, match=r"\[providers.p\] unknown provider kind 'antropic' .*did you mean 'anthropic'"
    ):
        Gateway(cfg)


async def test_from_config_shares_budgets_through_the_store(tmp_path: Path) -> None:
    from tether.gateway.budget import SqlBudgetLedger
    from tether.store import open_store

    cfg = config({"r": {"tiers": [["a"]], "budget": {"usd": 1}}}, ["a"])
    with open_store(f"sqlite:///{tmp_path}/g.db") as store:
        first = Gateway.from_config(cfg, store=store, models={"a": answering()})
        second = Gateway.from_config(cfg, store=store, models={"a": answering()})
        assert isinstance(first.budgets, LeasedBudgetLedger) and isinstance(first.budgets.inner, SqlBudgetLedger)
        a = await first.complete(request(), CallContext(route="r"))
        await second.complete(request(), CallContext(route="r"))
        scope = BudgetScope("route", "r", cfg.routes["r"].budget)  # type: ignore[arg-type]
        # Each replica charges its own lease; the first one's lease still holds its slice of the budget.
        usage = await second.budgets.usage(scope)
        assert usage.spent_usd == a.cost_usd and usage.reserved_usd > 0
        await first.budgets.flush()  # what a lease spent reaches the shared ledger when it ends (<= 1 s)
        usage = await second.budgets.usage(scope)
        assert usage.spent_usd == 2 * (a.cost_usd or 0)  # both replicas charge one budget
        assert usage.reserved_usd == 0  # the second replica's own lease counts as what it holds in flight: nothing
        await first.aclose()
        await second.aclose()


async def test_leasing_can_be_turned_off(tmp_path: Path) -> None:
    from tether.gateway.budget import SqlBudgetLedger
    from tether.store import open_store

    cfg = config({"r": {"tiers": [["a"]], "budget": {"usd": 1}}}, ["a"], gateway={"budget_lease_fraction": 0})
    with open_store(f"sqlite:///{tmp_path}/g.db") as store:
        gateway = Gateway.from_config(cfg, store=store, models={"a": answering()})
        assert isinstance(gateway.budgets, SqlBudgetLedger)
        await gateway.aclose()


async def test_a_deferred_call_is_settled_when_its_stream_ends(make_gateway: Callable[..., Gateway]) -> None:
    from tether.pricing import CostRecord

    records: list[CostRecord] = []
    cfg = config({"r": {"tiers": [["a"]], "budget": {"usd": 1}}}, ["a"])
    ledger = MemoryBudgetLedger()
    gateway = make_gateway(cfg, {"a": answering()}, budgets=ledger, cost_sink=records.append)

    async def open_stream(deployment: Any) -> str:
        return f"stream from {deployment.name}"

    stream, placement = await gateway.dispatch(
        CallContext(route="r", agent="proxy-client"),
        estimated_tokens=100,
        max_tokens=100,
        send=open_stream,
        usage_of=lambda _: None,
    )
    scope = BudgetScope("route", "r", cfg.routes["r"].budget)  # type: ignore[arg-type]
    assert stream == "stream from a"
    assert (await ledger.usage(scope)).reserved_usd > 0 and not records
    cost = await placement.finish(Usage(input_tokens=1000, output_tokens=100))
    assert cost == Decimal("0.0045")
    usage = await ledger.usage(scope)
    assert usage.reserved_usd == 0 and usage.spent_usd == Decimal("0.0045")
    (record,) = records
    assert (record.route, record.deployment, record.agent, record.cost_usd) == ("r", "a", "proxy-client", cost)
    await placement.finish(Usage(input_tokens=1))  # settles once
    assert len(records) == 1


async def test_stale_reservations_of_a_dead_caller_are_swept(make_gateway: Callable[..., Gateway]) -> None:
    from datetime import timedelta

    cfg = config({"r": {"tiers": [["a"]], "budget": {"usd": 1}}}, ["a"])
    ledger = MemoryBudgetLedger()
    gateway = make_gateway(cfg, {"a": answering()}, budgets=ledger)

    async def never_settled(deployment: Any) -> str:
        return "stream"

    await gateway.dispatch(
        CallContext(route="r"), estimated_tokens=100, max_tokens=100, send=never_settled, usage_of=lambda _: None
    )
    scope = BudgetScope("route", "r", cfg.routes["r"].budget)  # type: ignore[arg-type]
    assert (await ledger.usage(scope)).reserved_usd > 0
    assert await gateway.sweep_stale_reservations(timedelta(hours=1)) == 0
    assert await gateway.sweep_stale_reservations(timedelta(0)) == 1
    assert (await ledger.usage(scope)).reserved_usd == 0


async def test_from_config_keeps_budgets_in_redis_when_configured(redis_url: str) -> None:
    from tether.gateway.budget.redis import RedisBudgetLedger
    from tether.gateway.ratelimit import RedisRateLimitBackend

    cfg = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim"}},
            "deployments": {"a": {"provider": "p", "model": "claude-sonnet-4-5"}},
            "routes": {"r": {"tiers": [["a"]]}},
            "gateway": {"redis_url": redis_url},
        }
    )
    gateway = Gateway.from_config(cfg, models={"a": answering()})
    assert isinstance(gateway.budgets, LeasedBudgetLedger) and isinstance(gateway.budgets.inner, RedisBudgetLedger)
    assert isinstance(gateway.rate_limiter.backend, RedisRateLimitBackend)
    await gateway.aclose()


def test_redis_budgets_without_a_redis_url_is_a_config_error() -> None:
    cfg = GatewayConfig.model_validate({"gateway": {"budgets": "redis"}})
    with pytest.raises(ConfigError, match="redis_url"):
        Gateway.from_config(cfg)


async def test_a_sim_provider_plays_the_scenario_its_config_names(tmp_path: Path) -> None:
    (tmp_path / "plays.toml").write_text('unmatched_answer = "scripted answer"\n')
    cfg = GatewayConfig.model_validate(
        {
            "providers": {"p": {"kind": "sim", "scenario": str(tmp_path / "plays.toml")}},
            "deployments": {"d": {"provider": "p", "model": "claude-haiku-4-5"}},
            "routes": {"r": {"tiers": [["d"]]}},
        }
    )
    response = await Gateway.from_config(cfg).complete(request(), CallContext(route="r"))
    assert response.text == "scripted answer"

    missing = cfg.model_copy(
        update={"providers": {"p": cfg.providers["p"].model_copy(update={"scenario": "nowhere.toml"})}}
    )
    with pytest.raises(ConfigError, match=r"\[providers.p\] scenario 'nowhere.toml' cannot be read"):
        Gateway.from_config(missing)
    with pytest.raises(ValidationError, match="scenario is for kind"):
        GatewayConfig.model_validate({"providers": {"a": {"kind": "anthropic", "scenario": "x.toml"}}})
