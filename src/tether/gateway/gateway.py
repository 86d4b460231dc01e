"""The gateway: the one place every model call passes.

For each call, in order::

    route → rate limits (RPM/TPM) → response cache (opt-in, temperature 0)
          → starting tier (rules, budget burn) → for each tier, deployments by weight:
              breaker open? skip → budget reserve (max possible cost; fails closed)
              → call with retries (backoff + jitter, Retry-After) → settle budget and TPM
          → on a retryable failure, the next deployment (a fresh attempt with its own retries)

Every decision lands on the current span (the agent's ``chat`` span):
``tether.route``, ``tether.route.tier``, ``tether.route.reason``,
``tether.deployment``, ``tether.attempts``, ``tether.fallbacks``,
``tether.cache.hit``, and ``gen_ai.provider.name`` / ``gen_ai.response.model`` of
the deployment that answered.

The HTTP proxy (``tether.server.proxy``) streams through ``dispatch`` and settles
at the stream's end. In process, ``GatewayModel.stream`` is not routed as a
stream yet: it answers with the complete response as one event.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from opentelemetry import trace as otel_trace

from tether import semconv as sc
from tether.config import BudgetLimit, DeploymentConfig, GatewayConfig, RateLimit, RouteConfig
from tether.errors import (
    BudgetUnavailable,
    ConfigError,
    ModelError,
    NoDeploymentAvailable,
    StreamInterrupted,
    UnboundedCall,
    UnknownPriceError,
    UnknownRouteError,
)
from tether.gateway.bound import CallBound, ModelLimits, bound_of_request, context_window_of, image_tokens_of
from tether.gateway.breaker import BreakerRegistry, BreakerState, CircuitBreaker
from tether.gateway.budget import BudgetLedger, BudgetScope, MemoryBudgetLedger, Reservation, SqlBudgetLedger
from tether.gateway.budget.lease import LeasedBudgetLedger
from tether.gateway.deps import backend_of, bounded
from tether.gateway.faults import FaultyModel
from tether.gateway.ratelimit import (
    Grant,
    MemoryRateLimitBackend,
    RateLimitBackend,
    RateLimiter,
    RedisRateLimitBackend,
)
from tether.gateway.retry import call_with_retries, is_retryable
from tether.gateway.router import estimate_input_tokens, order_by_weight, starting_tier
from tether.messages import ModelRequest, ModelResponse, Usage
from tether.models.base import Model
from tether.pricing import CostRecord, Pricer, PriceRef
from tether.store import TraceStore

__all__ = ["BudgetOverrun", "CallContext", "Deployment", "Gateway", "GatewayModel", "Placement"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Waits between attempts at a call's settle the budget ledger did not take: doubling, capped.
_SETTLE_RETRY_FIRST_S = 0.2
_SETTLE_RETRY_MAX_S = 5.0


@dataclass(frozen=True)
class CallContext:
    """Who is calling, which route, and any budget of their own.

    Attributes:
        route: the route name (``[routes.<name>]``).
        agent: the agent's name, for rules and per-agent budgets.
        run_id: the run, for a per-run budget.
        key: the virtual key's name (proxy callers).
        tags: request tags, for rules.
        run_budget: a budget for this run alone (e.g. from ``Limits``).
        key_budget: the virtual key's own budget.
        key_rate_limit: the virtual key's own RPM/TPM limit.
    """

    route: str
    agent: str | None = None
    run_id: str | None = None
    key: str | None = None
    tags: tuple[str, ...] = ()
    run_budget: BudgetLimit | None = None
    key_budget: BudgetLimit | None = None
    key_rate_limit: RateLimit | None = None


@dataclass
class Deployment:
    """A configured deployment at run time: its model (faults wrapped in), its breaker, what bounds its calls."""

    name: str
    config: DeploymentConfig
    model: Model
    breaker: CircuitBreaker
    limits: ModelLimits = field(default_factory=lambda: ModelLimits(None, None, image_tokens_of(None, "")))

    @property
    def price_ref(self) -> PriceRef | None:
        return self.model.price_ref


@dataclass(frozen=True, slots=True)
class BudgetOverrun:
    """A call billed more than its reservation: the bound did not hold (an incident-worthy event).

    The real cost is recorded in full all the same; this says by how much the bound was wrong.

    Attributes:
        route: the route.
        deployment: the deployment that billed it.
        model: the deployment's model.
        key: the caller's virtual key, if any.
        agent: the calling agent, if known.
        run_id: the run, if known.
        reserved_usd: what the budgets reserved (the bound).
        cost_usd: what the call cost.
        usage: what the provider reported.
    """

    route: str
    deployment: str
    model: str
    key: str | None
    agent: str | None
    run_id: str | None
    reserved_usd: Decimal
    cost_usd: Decimal
    usage: Usage


def _limits(config: GatewayConfig, deployment: DeploymentConfig, model: Model) -> ModelLimits:
    from tether.models.registry import provider_spec

    wire = provider_spec(config.providers[deployment.provider].kind).wire
    return ModelLimits(
        context_window=deployment.context_window or context_window_of(model.price_ref),
        max_output_tokens=deployment.max_output_tokens,
        image_tokens=deployment.image_tokens or image_tokens_of(wire, deployment.model),
    )


@dataclass
class _ResponseCache:
    """Exact-match responses for deterministic (temperature 0) requests; bounded LRU with a TTL."""

    capacity: int = 1024
    entries: OrderedDict[str, tuple[float, ModelResponse]] = field(default_factory=OrderedDict)
    hits: int = 0
    misses: int = 0

    def get(self, key: str, now: float) -> ModelResponse | None:
        found = self.entries.get(key)
        if found is None or found[0] < now:
            if found is not None:
                del self.entries[key]
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return found[1]

    def put(self, key: str, response: ModelResponse, expires: float) -> None:
        self.entries[key] = (expires, response)
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


def _check_provider_kinds(config: GatewayConfig) -> None:
    """Refuse a provider whose kind no adapter is registered for (the config leaf cannot check it)."""
    from tether.models.registry import unknown_kind

    for name, provider in config.providers.items():
        problem = unknown_kind(provider.kind)
        if problem is not None:
            raise ConfigError(f"[providers.{name}] {problem}")


def _build_model(config: GatewayConfig, deployment: DeploymentConfig) -> Model:
    """The model a deployment calls, built by its provider's registered spec (``tether.models.registry``)."""
    from tether.models.registry import provider_spec, warn_if_unpriced

    provider = config.providers[deployment.provider]
    try:
        spec = provider_spec(provider.kind)
    except ConfigError as exc:
        raise ConfigError(f"[providers.{deployment.provider}] {exc}") from None
    model = spec.build(
        provider, deployment.model, name=deployment.provider, timeout_s=deployment.timeout_s or provider.timeout_s
    )
    if spec.wire is not None:
        # A provider key is a secret like any other: scrubbed from every record from the start.
        spec.provider_config(provider, name=deployment.provider).register_key()
    warn_if_unpriced(model, configured=deployment.model in config.prices)
    return model


class Gateway:
    """Routes, retries, falls back, limits, budgets and prices every model call.

    Args:
        config: providers, deployments, routes, prices and budgets (``tether.toml``).
        budgets: the budget ledger; in memory by default (``SqlBudgetLedger`` shares one across replicas).
        rate_limits: the rate-limit backend; in memory by default (``RedisRateLimitBackend`` shares one).
        models: models to use instead of building them from the config, by deployment name (tests, embedding).
        rng: randomness for weighted choice and jitter (seed it for reproducible tests).
        sleep: how to wait between retries (tests pass a fake).
        clock: monotonic clock for the response cache and the budget burn's freshness.
        cost_sink: receives a ``CostRecord`` for every settled call (``tether cost`` reads them).
        on_overrun: told of every call billed more than its reservation (``tether gateway serve``
            records it as an incident); it must not block.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        budgets: BudgetLedger | None = None,
        rate_limits: RateLimitBackend | None = None,
        models: Mapping[str, Model] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        response_cache_size: int = 1024,
        cost_sink: Callable[[CostRecord], None] | None = None,
        on_overrun: Callable[[BudgetOverrun], None] | None = None,
    ) -> None:
        self.config = config
        self._cost_sink = cost_sink
        self.on_overrun = on_overrun
        self.pricer = Pricer(config.prices)
        self.budgets = budgets or MemoryBudgetLedger()
        self.rate_limiter = RateLimiter(rate_limits or MemoryRateLimitBackend())
        # Waits on the shared budget and rate-limit stores are bounded on the request path (a 503 naming
        # the store past the bound); in-memory ones never wait, so they skip the timer.
        self.dependency_timeout_s = config.gateway.dependency_timeout_s
        budget_backend = backend_of(self.budgets)
        limits_backend = backend_of(self.rate_limiter.backend)
        self.budget_dependency: str | None = (
            None if budget_backend == "memory" else f"the budget store ({budget_backend})"
        )
        # A leased ledger serves most calls from memory: it bounds only its own waits on the shared
        # ledger, so a call served from a lease pays for no timer (~5-10 µs each on this machine).
        self._leased = isinstance(self.budgets, LeasedBudgetLedger)
        if self._leased and self.budget_dependency is not None:
            assert isinstance(self.budgets, LeasedBudgetLedger)
            self.budgets.bound_waits(self.budget_dependency, self.dependency_timeout_s)
        self.limits_dependency: str | None = (
            None if limits_backend == "memory" else f"the rate-limit store ({limits_backend})"
        )
        self.breakers = BreakerRegistry()
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        self._cache = _ResponseCache(capacity=response_cache_size)
        self._burns: dict[str, tuple[float, float]] = {}  # route -> (read at, burn)
        self._burn_reads: dict[str, asyncio.Task[float]] = {}  # refreshes running in the background
        self._unsettled: set[asyncio.Task[None]] = set()  # settles the ledger could not take yet, retried
        self.breaker_changes: list[tuple[str, BreakerState, BreakerState, str]] = []
        # Counters for reports and /metrics: retries, fallbacks, calls served and failed per deployment.
        self.stats: Counter[str] = Counter()
        self.deployments: dict[str, Deployment] = {}
        overrides = dict(models or {})
        _check_provider_kinds(config)
        for name, deployment in config.deployments.items():
            model = overrides.pop(name, None) or _build_model(config, deployment)
            if deployment.faults is not None and deployment.faults.active:
                model = FaultyModel(model, deployment.faults)
            breaker = self.breakers.get(name, deployment.breaker, on_change=self._breaker_changed)
            self.deployments[name] = Deployment(name, deployment, model, breaker, _limits(config, deployment, model))
        if overrides:
            raise ConfigError(f"models given for deployments that are not configured: {', '.join(sorted(overrides))}")
        self._check_budgeted_routes_are_priced()

    @classmethod
    def from_config(cls, config: GatewayConfig, *, store: TraceStore | None = None, **kwargs: Any) -> Gateway:
        """A gateway whose budgets and rate limits are shared by every replica when they can be.

        Budgets live in the store's database when a store is given (durable: a Redis
        restart cannot refill them), else in Redis when ``[gateway] redis_url`` is set,
        else in memory; ``[gateway] budgets`` overrides the choice. Budgets in Redis
        need Redis persistence, checked by ``start`` (see ``RedisBudgetLedger``), and
        are rebuilt from the store's cost ledger if Redis loses them. Rate limits live
        in Redis when ``redis_url`` is set. Otherwise each process would enforce its
        own copy of every limit.
        """
        settings = config.gateway
        if "budgets" not in kwargs:
            choice = settings.budgets
            if choice == "auto":
                choice = "database" if store is not None else "redis" if settings.redis_url else "memory"
            shared: BudgetLedger | None = None
            if choice == "redis":
                if not settings.redis_url:
                    raise ConfigError('[gateway] budgets = "redis" needs [gateway] redis_url')
                from tether.gateway.budget.redis import RedisBudgetLedger
                from tether.gateway.ledger import CostLedger

                shared = RedisBudgetLedger(
                    settings.redis_url,
                    rebuild_from=CostLedger(store) if store is not None else None,
                    persistence_verified=settings.redis_persistence_verified,
                )
            elif choice == "database":
                if store is None:
                    raise ConfigError('[gateway] budgets = "database" needs a store (TETHER_DATABASE_URL)')
                shared = SqlBudgetLedger(store)
            if shared is not None:
                kwargs["budgets"] = (
                    LeasedBudgetLedger(shared, fraction=settings.budget_lease_fraction, lease_s=settings.budget_lease_s)
                    if settings.budget_lease_fraction > 0
                    else shared
                )
        if config.gateway.redis_url and "rate_limits" not in kwargs:
            kwargs["rate_limits"] = RedisRateLimitBackend(config.gateway.redis_url)
        return cls(config, **kwargs)

    async def start(self) -> None:
        """Check the shared backends before serving: a Redis budget ledger checks Redis persistence.

        Raises:
            ConfigError: budgets are in a Redis without persistence (the message says what to set).
            StoreUnavailable: the budget ledger's backend cannot be reached.
        """
        from tether.gateway.budget.redis import RedisBudgetLedger

        ledger = self.budgets.inner if isinstance(self.budgets, LeasedBudgetLedger) else self.budgets
        if isinstance(ledger, RedisBudgetLedger):
            await ledger.start()

    def _check_budgeted_routes_are_priced(self) -> None:
        """A budgeted route must be able to price every deployment it may use (never $0 for unknown)."""
        for route_name, route in self.config.routes.items():
            if route.budget is None:
                continue
            for tier in route.tiers:
                for name in tier:
                    d = self.deployments[name]
                    if not self.pricer.has_price(d.price_ref, d.config.model):
                        raise ConfigError(
                            f"[routes.{route_name}] has a budget but deployment {name!r} (model "
                            f'{d.config.model!r}) has no known price: set [prices."{d.config.model}"] in '
                            "tether.toml or remove the deployment from the route"
                        )

    def _retried(self, deployment: str, attempt: int, exc: BaseException, delay: float) -> None:
        self.stats["retries"] += 1
        self.stats[f"retries:{deployment}"] += 1
        otel_trace.get_current_span().add_event(
            "retry", {"deployment": deployment, "attempt": attempt, "error": type(exc).__name__, "delay_s": delay}
        )

    def _breaker_changed(self, name: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        self.breaker_changes.append((name, old, new, reason))
        if len(self.breaker_changes) > 1000:
            del self.breaker_changes[:500]

    def model(self, route: str, *, tags: tuple[str, ...] = (), run_budget: BudgetLimit | None = None) -> GatewayModel:
        """A ``Model`` whose calls go through this gateway's ``route`` (for ``Agent(model=...)``)."""
        if route not in self.config.routes:
            raise UnknownRouteError(self._unknown_route(route))
        return GatewayModel(self, route, tags=tags, run_budget=run_budget)

    def _unknown_route(self, route: str) -> str:
        known = ", ".join(sorted(self.config.routes)) or "none"
        return f"route {route!r} is not defined: add [routes.{route}] to tether.toml (defined: {known})"

    def _scopes(self, ctx: CallContext, route: RouteConfig) -> list[BudgetScope]:
        scopes: list[BudgetScope] = []
        if route.budget is not None:
            scopes.append(BudgetScope("route", ctx.route, route.budget))
        if ctx.agent is not None and ctx.agent in self.config.budgets.agents:
            scopes.append(BudgetScope("agent", ctx.agent, self.config.budgets.agents[ctx.agent]))
        if ctx.run_budget is not None and ctx.run_id is not None:
            scopes.append(BudgetScope("run", ctx.run_id, ctx.run_budget))
        if ctx.key is not None and ctx.key_budget is not None:
            scopes.append(BudgetScope("key", ctx.key, ctx.key_budget))
        return scopes

    async def _burn(self, ctx: CallContext, route: RouteConfig) -> float | None:
        """The route budget's burn (used / limit) for step-down rules, at most ``budget_burn_refresh_s`` old.

        A read older than half that is refreshed in the background, so under steady traffic no call waits
        for it; one older than all of it (after a quiet spell) is read before the call.
        """
        if route.budget is None or route.budget.usd is None or not route.step_down:
            return None
        refresh_s = self.config.gateway.budget_burn_refresh_s
        now = self._clock()
        cached = self._burns.get(ctx.route)
        age = now - cached[0] if cached is not None else math.inf
        task = self._burn_reads.get(ctx.route)
        if task is None and age >= refresh_s / 2:
            task = asyncio.get_running_loop().create_task(self._read_burn(ctx.route, route.budget))
            self._burn_reads[ctx.route] = task
            task.add_done_callback(functools.partial(self._burn_read_done, ctx.route))
        if cached is not None and age < refresh_s:
            return cached[1]
        assert task is not None
        # One read for every caller that needs it now, bounded (a read from memory never gets here).
        return await self._bounded(asyncio.shield(task), self.budget_dependency)

    async def _read_burn(self, route_name: str, budget: BudgetLimit) -> float:
        read_at = self._clock()
        usage = await self.budgets.usage(BudgetScope("route", route_name, budget))
        assert budget.usd is not None
        burn = float((usage.spent_usd + usage.reserved_usd) / budget.usd)
        self._burns[route_name] = (read_at, burn)
        return burn

    def _burn_read_done(self, route_name: str, task: asyncio.Task[float]) -> None:
        if self._burn_reads.get(route_name) is task:
            del self._burn_reads[route_name]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Its waiters got the error; the next call past the refresh interval reads it again.
            logger.warning("tether: reading the budget burn of route %s failed: %s", route_name, exc)

    def _cache_key(self, ctx: CallContext, request: ModelRequest) -> str:
        body = request.model_dump(mode="json", exclude={"metadata"})
        return hashlib.blake2b(orjson.dumps([ctx.route, body], option=orjson.OPT_SORT_KEYS), digest_size=20).hexdigest()

    async def complete(self, request: ModelRequest, ctx: CallContext) -> ModelResponse:
        """Place one call on ``ctx.route``; returns the response, priced.

        Raises:
            UnknownRouteError: the route is not configured.
            RateLimited: an RPM/TPM limit has no room.
            BudgetExceeded: a budget has no room for the call's maximum cost (no fallback: it fails closed).
            UnknownPriceError: a budget applies and the deployment cannot be priced.
            ModelError: a non-retryable provider error (e.g. 400): the request itself is at fault.
            NoDeploymentAvailable: every deployment failed or was open-circuited.
        """
        route = self.route(ctx.route)
        # ``metadata.cache = "bypass"`` (the eval runner sets it: repeats must be independent) skips the cache.
        cacheable = route.response_cache and request.temperature == 0 and request.metadata.get("cache") != "bypass"
        cache_key = self._cache_key(ctx, request) if cacheable else ""
        if cacheable:
            cached = self._cache.get(cache_key, self._clock())
            otel_trace.get_current_span().set_attribute(sc.TETHER_CACHE_HIT, cached is not None)
            if cached is not None:
                # Served from tether's cache: no provider call, nothing spent.
                return cached.model_copy(update={"priced": True, "cost_usd": Decimal(0)})

        async def send(deployment: Deployment) -> ModelResponse:
            prompt_cache = request.cache_prompt and route.prompt_cache
            call = request.model_copy(update={"model": deployment.config.model, "cache_prompt": prompt_cache})
            return await deployment.model.complete(call)

        response, placement = await self.dispatch(
            ctx,
            estimated_tokens=estimate_input_tokens(request),
            max_tokens=request.max_tokens,
            send=send,
            usage_of=lambda r: r.usage,
            bound=bound_of_request(request),
        )
        otel_trace.get_current_span().set_attribute(sc.GEN_AI_RESPONSE_MODEL, response.model)
        if cacheable:
            self._cache.put(cache_key, response, self._clock() + route.response_cache_ttl_s)
        return response.model_copy(update={"priced": True, "cost_usd": placement.cost_usd})

    def route(self, name: str) -> RouteConfig:
        """The configured route, or ``UnknownRouteError`` naming the ones that exist."""
        route = self.config.routes.get(name)
        if route is None:
            raise UnknownRouteError(self._unknown_route(name))
        return route

    async def dispatch(
        self,
        ctx: CallContext,
        *,
        estimated_tokens: int,
        max_tokens: int,
        send: Callable[[Deployment], Awaitable[T]],
        usage_of: Callable[[T], Usage | None],
        bound: CallBound | Callable[[Deployment], CallBound] | None = None,
    ) -> tuple[T, Placement]:
        """Route one call: limits, tier, breakers, budget, retries, fallbacks — around ``send``.

        ``estimated_tokens`` and ``max_tokens`` feed TPM limits and routing rules;
        budgets reserve ``bound`` (``tether.gateway.bound``: the most the call can be
        billed, per deployment when a callable), which defaults to the estimate.

        ``send(deployment)`` makes the provider call in whatever form the caller
        needs (a ``ModelResponse`` in process, raw bytes or an open stream in the
        proxy). When ``usage_of(result)`` returns the usage, the call is settled
        at once; when it returns None (a stream whose usage arrives at its end),
        the caller must settle it with ``placement.finish(usage)`` or
        ``placement.abort(exc, usage)``.

        Raises the same errors as ``complete``.
        """
        route = self.route(ctx.route)
        span = otel_trace.get_current_span()
        span.set_attribute(sc.TETHER_ROUTE, ctx.route)
        grants = await self._acquire_limits(ctx, route, estimated_tokens + max_tokens)
        try:
            tier, reason = starting_tier(
                route,
                agent=ctx.agent,
                tags=ctx.tags,
                prompt_tokens=estimated_tokens,
                budget_burn=await self._burn(ctx, route),
            )
        except BaseException:
            for grant in grants:
                await self.rate_limiter.release(grant)
            raise
        span.set_attributes({sc.TETHER_ROUTE_TIER: tier, sc.TETHER_ROUTE_REASON: reason})
        scopes = self._scopes(ctx, route)
        failures: list[str] = []
        attempts = 0
        sent = False
        try:
            for tier_index in range(tier, len(route.tiers)):
                names = route.tiers[tier_index]
                weights = {n: self.deployments[n].config.weight for n in names}
                for name in order_by_weight(names, weights, self._rng):
                    deployment = self.deployments[name]
                    if not deployment.breaker.allow():
                        failures.append(f"{name}: circuit open")
                        continue
                    attempts += 1
                    reservation = await self._reserve(
                        deployment, scopes, bound or CallBound(text_tokens=estimated_tokens, max_output=max_tokens)
                    )
                    placement = Placement(self, ctx, deployment, reservation, grants)
                    sent = True
                    try:
                        result = await call_with_retries(
                            functools.partial(send, deployment),
                            route.retry,
                            rng=self._rng,
                            sleep=self._sleep,
                            on_retry=functools.partial(self._retried, deployment.name),
                        )
                    except BaseException as exc:
                        partial = exc.usage if isinstance(exc, StreamInterrupted) else None
                        await placement.abort(exc, partial if isinstance(partial, Usage) else None)
                        if isinstance(exc, ModelError) and is_retryable(exc):
                            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:160]}")
                            self.stats[f"failed:{name}"] += 1
                            continue
                        raise
                    grants = []  # the placement owns them now
                    span.set_attributes(
                        {
                            sc.TETHER_DEPLOYMENT: name,
                            sc.TETHER_ROUTE_TIER: tier_index,
                            sc.TETHER_ATTEMPTS: attempts,
                            sc.GEN_AI_PROVIDER_NAME: deployment.model.provider,
                        }
                    )
                    if failures:
                        span.set_attribute(sc.TETHER_FALLBACKS, tuple(failures))
                        self.stats["fallbacks"] += 1
                    self.stats[f"served:{name}"] += 1
                    usage = usage_of(result)
                    if usage is not None:
                        await placement.finish(usage)
                    return result, placement
        finally:
            for grant in grants:
                # Never sent anywhere: give the request back; sent and failed: it used its RPM slot.
                await (self.rate_limiter.settle(grant, 0) if sent else self.rate_limiter.release(grant))
        span.set_attributes({sc.TETHER_ATTEMPTS: attempts, sc.TETHER_FALLBACKS: tuple(failures)})
        raise NoDeploymentAvailable(ctx.route, failures)

    async def _acquire_limits(self, ctx: CallContext, route: RouteConfig, tokens: int) -> list[Grant]:
        """RPM/TPM on the route and on the caller's key; all or nothing."""
        limits = []
        if route.rate_limit is not None:
            limits.append((f"route:{ctx.route}", route.rate_limit))
        if ctx.key is not None and ctx.key_rate_limit is not None:
            limits.append((f"key:{ctx.key}", ctx.key_rate_limit))
        grants: list[Grant] = []
        try:
            for scope, limit in limits:
                acquire = self.rate_limiter.acquire(scope, limit, estimated_tokens=tokens)
                grants.append(await self._bounded(acquire, self.limits_dependency))
        except BaseException:
            for grant in grants:
                await self.rate_limiter.release(grant)
            raise
        return grants

    async def _reserve(
        self, deployment: Deployment, scopes: list[BudgetScope], bound: CallBound | Callable[[Deployment], CallBound]
    ) -> Reservation | None:
        """Reserve the most the call can cost on every budget; fails closed."""
        if not scopes:
            return None
        model_name = deployment.config.model
        try:
            call = bound(deployment) if callable(bound) else bound
            input_tokens, output_tokens = call.tokens(deployment.limits, deployment=deployment.name, model=model_name)
        except UnboundedCall:
            deployment.breaker.release()
            raise
        worst = self.pricer.max_cost(
            deployment.price_ref, model_name, input_tokens=input_tokens, max_output_tokens=output_tokens
        )
        if worst.usd is None:
            deployment.breaker.release()
            raise UnknownPriceError(
                f"no price known for {model_name!r} (deployment {deployment.name}) and a budget applies: "
                f'set [prices."{model_name}"] in tether.toml or use a priced model'
            )
        try:
            reserve = self.budgets.reserve(scopes, usd=worst.usd, tokens=input_tokens + output_tokens)
            return await (reserve if self._leased else self._bounded(reserve, self.budget_dependency))
        except BudgetUnavailable:
            self.stats["budget_unavailable"] += 1
            deployment.breaker.release()
            raise
        except BaseException:
            deployment.breaker.release()
            raise

    async def _bounded(self, awaitable: Awaitable[T], dependency: str | None) -> T:
        if dependency is None:
            return await awaitable
        return await bounded(awaitable, dependency=dependency, timeout_s=self.dependency_timeout_s)

    def _overran(self, overrun: BudgetOverrun) -> None:
        """A call billed above its reservation: count it, put it on the span and the log, tell ``on_overrun``."""
        self.stats["settle_above_reservation"] += 1
        self.stats[f"settle_above_reservation:{overrun.deployment}"] += 1
        otel_trace.get_current_span().add_event(
            "tether.budget.settle_above_reservation",
            {
                "tether.deployment": overrun.deployment,
                "tether.budget.reserved_usd": float(overrun.reserved_usd),
                "tether.cost_usd": float(overrun.cost_usd),
                "gen_ai.usage.input_tokens": overrun.usage.input_tokens,
                "gen_ai.usage.output_tokens": overrun.usage.output_tokens,
            },
        )
        logger.warning(
            "tether: settle above reservation: route %s deployment %s (model %s) billed $%s, $%s was reserved; "
            "the full cost is recorded (set context_window, max_output_tokens or image_tokens on the deployment "
            "if its bound is wrong)",
            overrun.route,
            overrun.deployment,
            overrun.model,
            overrun.cost_usd,
            overrun.reserved_usd,
        )
        if self.on_overrun is not None:
            try:
                self.on_overrun(overrun)
            except Exception:  # reporting must never break a call that already succeeded
                logger.warning("tether: the settle-above-reservation report failed", exc_info=True)

    def _record(self, record: CostRecord) -> None:
        if self._cost_sink is not None:
            try:
                self._cost_sink(record)
            except Exception:  # accounting must never break a call that already succeeded
                logger.warning("tether: cost record for %s could not be queued", record.deployment, exc_info=True)

    async def _settle(self, reservation: Reservation, *, usd: Decimal, tokens: int) -> None:
        """Settle a call's budget; if the ledger cannot take it now, keep retrying in the background.

        The provider has answered (and billed): the client gets its answer either way. Until the settle is
        recorded the ledger still holds the call's whole reservation, so the budget counts at least what
        was spent meanwhile; the spend itself is kept here and retried with backoff, never dropped.
        """
        budgets = self.budgets
        if self.budget_dependency is None or (
            isinstance(budgets, LeasedBudgetLedger) and budgets.settles_locally(reservation)
        ):
            # In memory: nothing to wait for, so no task and no timer on the hot path.
            try:
                await budgets.settle(reservation, usd=usd, tokens=tokens)
            except ValueError:
                raise
            except Exception as exc:
                logger.warning("tether: the spend of a call is not recorded in the budget yet (%s): retrying", exc)
                self._keep_settling(None, reservation, usd, tokens)
            return
        # Its own task, shielded: a settle the client stops waiting for still runs (and is never run twice).
        first = asyncio.ensure_future(budgets.settle(reservation, usd=usd, tokens=tokens))
        try:
            async with asyncio.timeout(self.dependency_timeout_s):
                await asyncio.shield(first)
            return
        except ValueError:
            raise
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not first.done():
                self._keep_settling(first, reservation, usd, tokens)
                raise
            logger.warning(
                "tether: the spend of a call ($%s, %d tokens) is not recorded in the budget yet (%s): retrying",
                usd,
                tokens,
                type(exc).__name__,
            )
        self._keep_settling(first, reservation, usd, tokens)

    def _keep_settling(
        self, first: asyncio.Future[None] | None, reservation: Reservation, usd: Decimal, tokens: int
    ) -> None:
        task = asyncio.get_running_loop().create_task(self._settle_later(first, reservation, usd, tokens))
        self._unsettled.add(task)
        task.add_done_callback(self._unsettled.discard)

    async def _settle_later(
        self, first: asyncio.Future[None] | None, reservation: Reservation, usd: Decimal, tokens: int
    ) -> None:
        if first is not None:
            try:
                await first  # the settle already sent may still go through: never send a second one alongside
                return
            except Exception:  # noqa: S110 - it failed: retried below
                pass
        delay = _SETTLE_RETRY_FIRST_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self.budgets.settle(reservation, usd=usd, tokens=tokens)
            except Exception:
                delay = min(delay * 2, _SETTLE_RETRY_MAX_S)
                continue
            logger.info("tether: the spend of a call ($%s, %d tokens) is recorded in the budget now", usd, tokens)
            return

    @property
    def unsettled(self) -> int:
        """Calls whose spend the budget ledger has not taken yet (retried in the background)."""
        return len(self._unsettled)

    async def sweep_stale_reservations(self, older_than: timedelta = timedelta(minutes=30)) -> int:
        """Release budget reservations left by calls that never settled (a replica that died mid-call).

        Run it periodically (``tether gateway serve`` does, see ``[gateway] stale_reservation_s``);
        ``older_than`` must be well above the longest call. The shared ledgers count a swept reservation
        as spent in full (fail closed: the dead replica's calls may have been billed).
        """
        return await self.budgets.sweep_stale(older_than)

    async def aclose(self, *, settle_timeout_s: float = 5.0) -> None:
        """Close every deployment's connections and the shared backends.

        Spend still being retried gets up to ``settle_timeout_s`` more; what is then still not recorded
        stays reserved in the shared ledger, and its sweep counts the reservation as spent in full.
        """
        for task in list(self._burn_reads.values()):
            task.cancel()
        if self._unsettled:
            _, pending = await asyncio.wait(list(self._unsettled), timeout=settle_timeout_s)
            if pending:
                logger.error(
                    "tether: the spend of %d call(s) could not be recorded in the budget before shutdown; their "
                    "reservations stay and are counted as spent in full when swept",
                    len(pending),
                )
                for unsettled in pending:
                    unsettled.cancel()
        for deployment in self.deployments.values():
            await deployment.model.aclose()
        await self.rate_limiter.aclose()
        await self.budgets.aclose()


class Placement:
    """A call placed on one deployment; settles its budget, TPM and breaker exactly once.

    Attributes:
        deployment: where the call went.
        cost_usd: the call's cost once finished (None while open, or when the price is unknown).
    """

    def __init__(
        self,
        gateway: Gateway,
        ctx: CallContext,
        deployment: Deployment,
        reservation: Reservation | None,
        grants: list[Grant],
    ) -> None:
        self.gateway = gateway
        self.ctx = ctx
        self.deployment = deployment
        self._reservation = reservation
        self._grants = grants
        self._done = False
        self.cost_usd: Decimal | None = None
        self.overrun: BudgetOverrun | None = None

    async def finish(self, usage: Usage) -> Decimal | None:
        """The call succeeded and used ``usage``: charge budgets and TPM, tell the breaker."""
        if self._done:
            return self.cost_usd
        self._done = True
        self.deployment.breaker.record_success()
        await self._charge(usage)
        return self.cost_usd

    async def abort(self, exc: BaseException, usage: Usage | None = None) -> None:
        """The call failed (or the client went away); charge what it used, if anything is known."""
        if self._done:
            return
        self._done = True
        if isinstance(exc, ModelError) and is_retryable(exc):
            self.deployment.breaker.record_failure()
        else:
            self.deployment.breaker.release()  # cancelled, or the request's own fault: not the deployment's
        if usage is not None:
            # A stream cut mid-answer was still billed for what it produced: charge that, never drop it.
            await self._charge(usage)
            return
        if self._reservation is not None:
            # Ledgers finish a release (and a settle) even if this task is cancelled meanwhile.
            await self.gateway.budgets.release(self._reservation)
        for grant in self._grants:
            await self.gateway.rate_limiter.settle(grant, 0)

    async def _charge(self, usage: Usage) -> None:
        gateway, deployment = self.gateway, self.deployment
        model_name = deployment.config.model
        cost = gateway.pricer.price(deployment.price_ref, model_name, usage)
        self.cost_usd = cost.usd
        # Recorded first: the cost journal has it before the call's answer leaves (and before any await
        # below), so it survives the process being killed while the budget is settled.
        gateway._record(
            CostRecord(
                time_ns=time.time_ns(),
                route=self.ctx.route,
                deployment=deployment.name,
                provider=deployment.model.provider,
                model=model_name,
                agent=self.ctx.agent,
                key=self.ctx.key,
                run_id=self.ctx.run_id,
                usage=usage,
                cost_usd=cost.usd,
                price_version=cost.price_version,
            )
        )
        reservation = self._reservation
        if reservation is not None:
            await gateway._settle(reservation, usd=cost.usd or Decimal(0), tokens=usage.total_tokens)
            if cost.usd is not None and cost.usd > reservation.usd:
                self.overrun = BudgetOverrun(
                    route=self.ctx.route,
                    deployment=deployment.name,
                    model=model_name,
                    key=self.ctx.key,
                    agent=self.ctx.agent,
                    run_id=self.ctx.run_id,
                    reserved_usd=reservation.usd,
                    cost_usd=cost.usd,
                    usage=usage,
                )
                gateway._overran(self.overrun)
        for grant in self._grants:
            await gateway.rate_limiter.settle(grant, usage.total_tokens)


class GatewayModel(Model):
    """A ``Model`` that sends every call through a gateway route.

    The agent's run id and name travel in ``ModelRequest.metadata`` (the loop sets
    them), so per-agent and per-run budgets and agent rules apply.
    """

    provider = "tether.gateway"

    def __init__(
        self, gateway: Gateway, route: str, *, tags: tuple[str, ...] = (), run_budget: BudgetLimit | None = None
    ) -> None:
        self.gateway = gateway
        self.route = route
        self.model_name = f"route:{route}"
        self.tags = tags
        self.run_budget = run_budget
        self.simulated = all(d.model.simulated for d in gateway.deployments.values())

    async def complete(self, request: ModelRequest) -> ModelResponse:
        run_budget = self.run_budget
        usd, tokens = request.metadata.get("run_budget_usd"), request.metadata.get("run_budget_tokens")
        if run_budget is None and (usd or tokens):
            # The agent's own Limits (max_cost_usd, max_tokens): the run's budget, reserved before each call.
            run_budget = BudgetLimit(usd=Decimal(usd) if usd else None, tokens=int(tokens) if tokens else None)
        ctx = CallContext(
            route=self.route,
            agent=request.metadata.get("agent"),
            run_id=request.metadata.get("run_id"),
            tags=self.tags,
            run_budget=run_budget,
        )
        return await self.gateway.complete(request, ctx)
