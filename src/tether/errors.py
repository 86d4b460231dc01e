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
    "ConfigError",
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
