"""The bounds tether.toml puts on calls: retries, breakers, rate limits, budgets and injected faults.

Embedded in the gateway's tables (``tether.config.gateway``); the gateway modules that enforce them
(``tether.gateway.retry``, ``.breaker``, ``.ratelimit``, ``.budget``, ``.faults``) import them from here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BreakerConfig", "BudgetLimit", "FaultConfig", "Probability", "RateLimit", "RetryPolicy"]

# A BIGINT holds 9.2e18 nano-dollars; a limit of at most $1e9 leaves room for overspend on top.
MAX_BUDGET_USD: Final = Decimal(1_000_000_000)
MAX_BUDGET_TOKENS: Final = 10**15


class RetryPolicy(BaseModel):
    """How one deployment's failed calls are retried; see the module docstring.

    Attributes:
        max_retries: retries after the first attempt (0: no retries).
        base_delay_s: the cap of the first retry's delay.
        max_delay_s: the largest cap, whatever the attempt.
        multiplier: how much the cap grows with each retry.
        jitter: ``full``, ``equal`` or ``none``.
        honour_retry_after: wait at least the provider's Retry-After.
        max_retry_after_s: a longer Retry-After is not waited for; the call fails over instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=2, ge=0)
    base_delay_s: float = Field(default=0.5, ge=0.0, allow_inf_nan=False)
    max_delay_s: float = Field(default=20.0, ge=0.0, allow_inf_nan=False)
    multiplier: float = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    jitter: Literal["full", "equal", "none"] = "full"
    honour_retry_after: bool = True
    max_retry_after_s: float = Field(default=60.0, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check_delays(self) -> RetryPolicy:
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(
                f"max_delay_s ({self.max_delay_s:g}) must be at least base_delay_s ({self.base_delay_s:g})"
            )
        return self


class BreakerConfig(BaseModel):
    """When a breaker opens and how it recovers.

    Attributes:
        consecutive_failures: open after this many failures in a row.
        failure_rate: ... or when failures / requests over the window reach this.
        window_s: the sliding window the rate is measured over.
        min_requests: the rate rule applies only once the window holds this many requests.
        open_s: how long the breaker stays open before letting probes through.
        half_open_probes: probes allowed in flight while half-open.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    consecutive_failures: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    window_s: float = Field(default=60.0, gt=0.0, allow_inf_nan=False)
    min_requests: int = Field(default=10, ge=1)
    open_s: float = Field(default=30.0, gt=0.0, allow_inf_nan=False)
    half_open_probes: int = Field(default=1, ge=1)


class RateLimit(BaseModel):
    """An RPM and/or TPM limit, as written in tether.toml: ``{rpm = 600, tpm = 200000}``.

    Attributes:
        rpm: requests per minute; None for no request limit.
        tpm: tokens (input + output) per minute; None for no token limit.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _limits_something(self) -> RateLimit:
        if self.rpm is None and self.tpm is None:
            raise ValueError("a rate limit needs rpm or tpm (or both), e.g. {rpm = 600, tpm = 200000}")
        return self


class BudgetLimit(BaseModel):
    """A budget's limits, as written in tether.toml: ``{usd = 50, tokens = 2_000_000, period = "day"}``.

    Attributes:
        usd: the most that may be spent, in US dollars; None for no USD limit.
        tokens: the most tokens (input + output) that may be used; None for no token limit.
        period: ``"day"`` or ``"month"`` (UTC calendar periods); None for a lifetime budget.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    usd: Decimal | None = Field(default=None, gt=0, le=MAX_BUDGET_USD, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0, le=MAX_BUDGET_TOKENS)
    period: Literal["day", "month"] | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> Self:
        if self.usd is None and self.tokens is None:
            raise ValueError("a budget needs usd, tokens or both, e.g. {usd = 50, period = 'day'}")
        return self


def _probability(value: float) -> float:
    # NaN fails both comparisons, so it is rejected too.
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be a probability between 0 and 1, got {value}")
    return value


Probability = Annotated[float, AfterValidator(_probability)]


class FaultConfig(BaseModel):
    """The faults injected into one deployment's calls; every rate is a probability.

    Attributes:
        latency_ms: added before every call, really slept.
        latency_jitter_ms: uniform jitter around ``latency_ms`` (never below 0 in total).
        error_rate: chance a call fails with ``ModelHTTPError``.
        error_statuses: HTTP statuses an error is drawn from.
        retry_after_s: Retry-After sent with 429, 503 and 529 errors.
        timeout_rate: chance a call fails with ``ModelTimeoutError``.
        timeout_after_s: how long a timing-out call hangs before failing.
        malformed_rate: chance a call fails with ``MalformedResponseError``.
        stream_cut_rate: chance a stream is cut with ``StreamInterrupted``.
        stream_cut_after: events a cut stream delivers before it breaks.
        seed: which reproducible sequence of faults (see the module docstring).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    latency_jitter_ms: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    error_rate: Probability = 0.0
    error_statuses: tuple[int, ...] = (429, 500, 503)
    retry_after_s: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    timeout_rate: Probability = 0.0
    timeout_after_s: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    malformed_rate: Probability = 0.0
    stream_cut_rate: Probability = 0.0
    stream_cut_after: int = Field(default=3, ge=0)
    seed: int = 0

    @field_validator("error_statuses")
    @classmethod
    def _check_statuses(cls, statuses: tuple[int, ...]) -> tuple[int, ...]:
        if not statuses:
            raise ValueError("needs at least one HTTP status, e.g. (429, 500, 503)")
        bad = [status for status in statuses if not 400 <= status <= 599]
        if bad:
            raise ValueError(f"must be HTTP error statuses between 400 and 599, got {bad}")
        return statuses

    @property
    def active(self) -> bool:
        """Whether any fault is configured."""
        return (
            self.latency_ms > 0
            or self.latency_jitter_ms > 0
            or self.error_rate > 0
            or self.timeout_rate > 0
            or self.malformed_rate > 0
            or self.stream_cut_rate > 0
        )
