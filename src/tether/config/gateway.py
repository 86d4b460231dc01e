"""The gateway's tables of tether.toml: providers, deployments, routes, prices, budgets, ``[gateway]``.

Read as part of ``tether.config.Settings``::

    [providers.anthropic]                 # credentials by environment variable name, never inline
    kind = "anthropic"                    # the provider (and its wire format): anthropic | openai | sim
    api_key_env = "ANTHROPIC_API_KEY"     # the credential: which variable holds the key

    [providers.vllm]
    kind = "openai"
    base_url = "http://10.0.0.5:8000/v1"  # an OpenAI-compatible server; no key needed

    [deployments.sonnet-a]
    provider = "anthropic"
    model = "claude-sonnet-4-5"
    weight = 3                            # share of its tier's traffic
    faults = { error_rate = 0.1 }         # chaos drills: injected latency, errors, cut streams

    [routes.support]
    tiers = [["opus"], ["sonnet-a", "sonnet-b"], ["haiku"]]   # tried in order on failure
    budget = { usd = 50, period = "day" }
    rate_limit = { rpm = 600, tpm = 200000 }
    step_down = [{ budget_burn_over = 0.8, tiers = 1 }]       # cheaper tier once 80% is spent
    rules = [{ agent = "triage", tier = 2 }, { prompt_tokens_over = 100000, tier = 1 }]

    [prices."my-finetune"]                # for models genai-prices does not know
    input_per_mtok = 3.0
    output_per_mtok = 15.0

    [budgets.agents.oncall]
    usd = 5
    period = "day"

Every reference is checked when the file is loaded: a deployment naming an
unknown provider, a route naming an unknown deployment, a rule pointing at a
tier the route does not have — each is a ``ConfigError`` naming the table and
the key. A provider's ``kind`` is a string here: this package sits below the
model adapters, so the kinds are checked against ``tether.models.registry``
where settings are used (building the gateway, ``tether config check``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator

from tether.config.base import Strict
from tether.config.limits import BreakerConfig, BudgetLimit, FaultConfig, RateLimit, RetryPolicy

__all__ = [
    "BudgetsConfig",
    "DeploymentConfig",
    "GatewayConfig",
    "GatewaySettings",
    "PriceConfig",
    "ProviderSettings",
    "RouteConfig",
    "RouteRule",
    "StepDown",
]


class ProviderSettings(Strict):
    """One ``[providers.<name>]`` table: which provider, where it is, and the credential to call it with.

    ``kind`` names the provider adapter (and so its wire format); the credential fields
    (``api_key_env``, ``auth``) are apart from it, so one wire format serves several providers.
    ``base_url`` and ``api_key_env`` left out take the adapter's defaults
    (``tether.models.registry.ProviderSpec``).
    """

    kind: str = Field(min_length=1)
    base_url: str | None = None
    #: The credential: the environment variable holding the API key (never the key itself).
    api_key_env: str | None = None
    #: ``"default"``: the adapter's own (an API key for anthropic / openai, none for sim and for an
    #: ``openai`` kind at its own ``base_url``); ``"api_key"``: always send the key; ``"none"``: send none.
    auth: Literal["default", "api_key", "none"] = "default"
    timeout_s: float = Field(default=600.0, gt=0)
    #: ``sim`` only: a scenario file (TOML or JSON) the simulated model plays.
    scenario: str | None = None

    @model_validator(mode="after")
    def _scenario_is_for_sim(self) -> ProviderSettings:
        if self.scenario is not None and self.kind != "sim":
            raise ValueError(f'scenario is for kind = "sim" providers only, not {self.kind!r}')
        if self.auth == "none" and self.api_key_env is not None:
            raise ValueError('auth = "none" sends no key: remove api_key_env, or set auth = "api_key"')
        return self


class DeploymentConfig(Strict):
    """One model at one provider: what routes pick from."""

    provider: str
    model: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    faults: FaultConfig | None = None
    breaker: BreakerConfig | None = None
    # What bounds a call's billing, for budget reservations (tether.gateway.bound): the context
    # window (default: genai-prices' figure for the model), the output cap used when a request
    # names none, and the most tokens one image part costs (default: the provider's documented maximum).
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    image_tokens: int | None = Field(default=None, gt=0)


class RouteRule(Strict):
    """Start at ``tier`` when every condition given holds."""

    tier: int = Field(ge=0)
    agent: str | list[str] | None = None
    tag: str | None = None
    prompt_tokens_over: int | None = Field(default=None, ge=0)
    prompt_tokens_under: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _has_condition(self) -> RouteRule:
        if (
            self.agent is None
            and self.tag is None
            and self.prompt_tokens_over is None
            and self.prompt_tokens_under is None
        ):
            raise ValueError("a rule needs a condition: agent, tag, prompt_tokens_over or prompt_tokens_under")
        return self


class StepDown(Strict):
    """Skip ``tiers`` tiers once the route's USD budget is more than ``budget_burn_over`` used."""

    budget_burn_over: float = Field(gt=0, lt=1)
    tiers: int = Field(default=1, ge=1)


class RouteConfig(Strict):
    """An ordered set of tiers with rules, retries, budgets and limits."""

    tiers: list[list[str]] = Field(min_length=1)
    rules: list[RouteRule] = Field(default_factory=list)
    step_down: list[StepDown] = Field(default_factory=list)
    retry: RetryPolicy = RetryPolicy()
    budget: BudgetLimit | None = None
    rate_limit: RateLimit | None = None
    prompt_cache: bool = True
    response_cache: bool = False
    response_cache_ttl_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _tiers_not_empty(self) -> RouteConfig:
        for i, tier in enumerate(self.tiers):
            if not tier:
                raise ValueError(f"tier {i} is empty: list at least one deployment")
        for rule in self.rules:
            if rule.tier >= len(self.tiers):
                raise ValueError(f"a rule starts at tier {rule.tier} but the route has {len(self.tiers)} tiers")
        return self


class PriceConfig(Strict):
    """A price for a model genai-prices does not know (USD per million tokens)."""

    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(ge=0)
    cache_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)


class BudgetsConfig(Strict):
    """Budgets that are not a route's own: per agent (and, with the proxy, per virtual key)."""

    agents: dict[str, BudgetLimit] = Field(default_factory=dict)


class GatewaySettings(Strict):
    """Where shared state lives, and the bounds on one proxied request."""

    redis_url: str | None = None
    default_route: str | None = None
    # Where budgets are kept: "auto" = the store's database when there is a store (shared, durable;
    # `tether gateway serve` always has one), else Redis when redis_url is set, else memory (one
    # process only). Redis keeps rate limits and kill messages either way. Budgets in Redis need
    # Redis persistence (appendonly yes), checked at start-up; where CONFIG is disabled (managed
    # Redis), set redis_persistence_verified = true once you have checked it yourself.
    budgets: Literal["auto", "redis", "database", "memory"] = "auto"
    redis_persistence_verified: bool = False
    # Shared budgets are reserved from leases: slices of the budget this replica holds for up to
    # budget_lease_s, so most calls are charged in memory (see tether.gateway.budget.lease).
    # 0 charges every call to the shared ledger directly.
    budget_lease_fraction: float = Field(default=0.01, ge=0, le=0.25)
    budget_lease_s: float = Field(default=1.0, gt=0, le=60)
    # How stale the budget burn read for step-down rules may be.
    budget_burn_refresh_s: float = Field(default=1.0, ge=0, le=60)
    # The largest request the proxy reads (413 above it): Anthropic's own limit for the Messages API.
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # The most messages one request may carry (413 above it); translation is linear in them.
    max_request_messages: int = Field(default=10_000, ge=1, le=1_000_000)
    # On SIGTERM/SIGINT: how long calls and streams in flight may take to finish; streams still open
    # then are cut and billed for what they used.
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=3600)
    # Each cost record is appended here before its call's answer leaves, until the costs table has it
    # (survives kill -9; see tether.gateway.journal). Relative paths are from the working directory.
    journal_dir: str = ".tether/journal"
    # Flush each journal line to disk too (survives a power cut; one disk flush per call).
    journal_fsync: bool = False
    # Longest wait for the store or Redis on a request (key check, budget, rate limit): past it the
    # request gets a 503 naming the dependency.
    dependency_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # A budget reservation older than this is a dead replica's (its lease or call): swept and counted as
    # spent in full. None: the longest deployment timeout plus two leases plus a minute.
    stale_reservation_s: float | None = Field(default=None, gt=0)


class GatewayConfig(Strict):
    """Providers, deployments, routes, prices and budgets, with every reference checked."""

    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    deployments: dict[str, DeploymentConfig] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    budgets: BudgetsConfig = BudgetsConfig()
    gateway: GatewaySettings = GatewaySettings()

    @property
    def stale_reservation_s(self) -> float:
        """How old a budget reservation must be before the sweep takes it for a dead replica's."""
        if self.gateway.stale_reservation_s is not None:
            return self.gateway.stale_reservation_s
        longest = max(
            (d.timeout_s or self.providers[d.provider].timeout_s for d in self.deployments.values()), default=600.0
        )
        return longest + 2 * self.gateway.budget_lease_s + 60.0

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for name, deployment in self.deployments.items():
            if deployment.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f"[deployments.{name}] provider {deployment.provider!r} is not defined under [providers] "
                    f"(defined: {known})"
                )
        for name, route in self.routes.items():
            for i, tier in enumerate(route.tiers):
                for deployment_name in tier:
                    if deployment_name not in self.deployments:
                        known = ", ".join(sorted(self.deployments)) or "none"
                        raise ValueError(
                            f"[routes.{name}] tier {i} names deployment {deployment_name!r}, which is not defined "
                            f"under [deployments] (defined: {known})"
                        )
        default = self.gateway.default_route
        if default is not None and default not in self.routes:
            raise ValueError(f"[gateway] default_route {default!r} is not defined under [routes]")
        return self
