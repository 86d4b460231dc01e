"""The tether exception tree.

Two families, as in pydantic-ai: ``UserError`` is a mistake of the developer
or operator (the message says how to fix it); everything else is a run-time
failure of something tether talks to.

::

    TetherError
    ├── UserError                  fix your config, code or arguments
    │   ├── ConfigError            malformed tether.toml / TETHER_* / CLI args
    │   ├── UnknownModelError      a model reference tether cannot resolve
    │   └── ToolDefinitionError    a @tool whose signature cannot be described
    │   ├── UnknownRouteError      a gateway route that tether.toml does not define
    │   ├── UnknownPriceError      a budgeted route asked to spend on a model with no known price
    │   ├── VirtualKeyExists       a virtual key with that name exists already
    │   ├── UnknownVirtualKey      no virtual key has that name
    │   └── VirtualKeyRevoked      the virtual key was revoked already
    ├── GatewayError               the gateway refused or could not place a call
    │   ├── BudgetExceeded         the call's maximum cost does not fit a budget (fails closed)
    │   ├── RateLimited            an RPM/TPM limit has no room (retry_after says when)
    │   ├── RequestTooLarge        a request needs more tokens than its TPM limit allows in a minute
    │   ├── RateLimitBackendUnavailable  the shared rate-limit store cannot be reached
    │   ├── BudgetUnavailable      the budget ledger cannot vouch for its counters now (fails closed)
    │   ├── UnboundedCall          a budgeted call whose billing has no upper bound (say what to configure)
    │   └── NoDeploymentAvailable  every deployment of every tier failed or is open-circuited
    ├── ModelError                 a model call failed at run time
    │   ├── ModelHTTPError         the provider answered with an HTTP error (status, body)
    │   ├── ModelConnectionError   no answer: connection refused, reset, DNS
    │   ├── ModelTimeoutError      the provider did not answer in time
    │   ├── MalformedResponseError the provider answered with something we cannot parse
    │   └── StreamInterrupted      a stream ended before the provider said it was done
    └── StoreError
        └── StoreUnavailable       the database cannot be reached or opened
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "BudgetUnavailable",
    "ConfigError",
    "GatewayError",
    "NoDeploymentAvailable",
    "RateLimitBackendUnavailable",
    "RateLimited",
    "RequestTooLarge",
    "UnboundedCall",
    "UnknownPriceError",
    "UnknownRouteError",
    "UnknownVirtualKey",
    "MalformedResponseError",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelTimeoutError",
    "StoreError",
    "StoreUnavailable",
    "StreamInterrupted",
    "TetherError",
    "ToolDefinitionError",
    "UnknownModelError",
    "UserError",
    "VirtualKeyExists",
    "VirtualKeyRevoked",
]


class TetherError(Exception):
    """Base of every error tether raises on purpose."""


class UserError(TetherError):
    """The developer's or operator's mistake; the message says what to do."""


class ConfigError(UserError):
    """Malformed configuration: tether.toml, a TETHER_* variable or a CLI argument."""


class UnknownModelError(UserError):
    """A model reference that names no provider tether knows."""


class ToolDefinitionError(UserError):
    """A tool function whose signature cannot be turned into a JSON schema."""


class UnknownRouteError(UserError):
    """A gateway route that the configuration does not define."""


class UnknownPriceError(UserError):
    """A budgeted route would spend on a model whose price is unknown.

    An unknown price is never treated as $0: configure ``[prices."<model>"]``
    in tether.toml or route the call to a priced model.
    """


class GatewayError(TetherError):
    """The gateway refused a call, or could not place it anywhere."""


class BudgetExceeded(GatewayError):
    """A budget has no room for the call's maximum possible cost.

    Attributes:
        scope: which budget, e.g. ``route:support`` or ``key:ci-bot``.
        limit: the budget's limit (USD or tokens, per ``unit``).
        used: what was spent plus reserved when the call was refused.
        requested: what the call would have reserved.
        unit: ``usd`` or ``tokens``.
    """

    def __init__(self, scope: str, *, limit: float, used: float, requested: float, unit: str = "usd") -> None:
        self.scope = scope
        self.limit = limit
        self.used = used
        self.requested = requested
        self.unit = unit

        def amount(value: float) -> str:
            return f"${value:.4f}" if unit == "usd" else f"{value:,.0f} tokens"

        super().__init__(
            f"budget {scope} exceeded: {amount(used)} of {amount(limit)} used, this call needs up to "
            f"{amount(requested)} — raise the budget in tether.toml or wait for its period to roll over"
        )


class RateLimited(GatewayError):
    """A rate limit has no room now; ``retry_after`` seconds until it may."""

    def __init__(self, key: str, *, retry_after: float, limit: str) -> None:
        self.key = key
        self.retry_after = retry_after
        self.limit = limit
        super().__init__(f"rate limit {limit} for {key} reached: retry in {retry_after:.2f} s")


class NoDeploymentAvailable(GatewayError):
    """Every deployment the route could use failed or was skipped.

    ``attempts`` lists what happened, one ``deployment: reason`` string each.
    """

    def __init__(self, route: str, attempts: list[str]) -> None:
        self.route = route
        self.attempts = attempts
        detail = "; ".join(attempts) if attempts else "no deployment configured"
        super().__init__(f"route {route}: no deployment could answer ({detail})")


class VirtualKeyExists(UserError):
    """A virtual key with this name exists already (revoked keys keep their names)."""


class UnknownVirtualKey(UserError):
    """No virtual key has this name."""


class VirtualKeyRevoked(UserError):
    """The virtual key was revoked already."""


class RateLimitBackendUnavailable(GatewayError):
    """The shared rate-limit store cannot be reached or failed, so no limit can be checked."""


class BudgetUnavailable(GatewayError):
    """The budget ledger cannot vouch for its counters right now, so budgeted calls are refused (fail closed).

    Raised, for example, while counters lost with a Redis restart are rebuilt
    from the durable cost ledger; the message says what happened and when to retry.
    """


class UnboundedCall(GatewayError):
    """A budgeted call whose billing has no upper bound, so no reservation could cover it.

    The message says what to configure (``context_window``, ``max_output_tokens``)
    or what to send (``max_tokens``).
    """


class RequestTooLarge(GatewayError):
    """A request needs more tokens than its TPM limit allows in a whole minute.

    Unlike ``RateLimited`` there is no point retrying: the request could never fit.

    Attributes:
        scope: the limited scope, e.g. ``route:support``.
        tokens: the request's estimated tokens.
        tpm: the TPM limit.
    """

    def __init__(self, scope: str, *, tokens: int, tpm: int) -> None:
        self.scope = scope
        self.tokens = tokens
        self.tpm = tpm
        super().__init__(
            f"request for {scope} needs about {tokens:,} tokens but tpm {tpm} allows at most {tpm:,} "
            "tokens per minute, so it could never be sent: shorten the prompt or max_tokens, "
            "or raise tpm in tether.toml"
        )


class ModelError(TetherError):
    """A model call failed at run time.

    Attributes:
        provider: the provider name (``anthropic``, ``openai``, ``sim``...).
        retryable: whether a retry or a fallback could succeed.
    """

    retryable: bool = False

    def __init__(self, message: str, *, provider: str = "") -> None:
        super().__init__(message)
        self.provider = provider


class ModelHTTPError(ModelError):
    """The provider answered with an HTTP error status.

    ``body`` is the response body with any credential redacted. 408, 409, 429
    and 5xx are retryable.
    """

    def __init__(
        self,
        status: int,
        body: str,
        *,
        provider: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.retryable = status in (408, 409, 429) or status >= 500
        short = body if len(body) <= 300 else body[:300] + "…"
        super().__init__(f"{provider or 'provider'} returned HTTP {status}: {short}", provider=provider)


class ModelConnectionError(ModelError):
    """No answer from the provider (connection refused, reset, name resolution)."""

    retryable = True


class ModelTimeoutError(ModelError):
    """The provider did not answer within the timeout."""

    retryable = True


class MalformedResponseError(ModelError):
    """The provider's answer could not be parsed into a response."""

    retryable = True


class StreamInterrupted(ModelError):
    """A stream ended before the provider signalled the end of the answer.

    Never treated as success: whatever text arrived is in ``partial_text`` and
    whatever usage was reported so far is in ``usage`` (may be None).
    """

    retryable = True

    def __init__(self, message: str, *, provider: str = "", partial_text: str = "", usage: object = None) -> None:
        super().__init__(message, provider=provider)
        self.partial_text = partial_text
        self.usage = usage


class StoreError(TetherError):
    """A failure of the trace store."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or opened."""
