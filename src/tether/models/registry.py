"""Every model provider tether can call, registered once: a ``ProviderSpec`` per provider module.

A spec says what the gateway, the proxy, the ledger and ``tether config check`` need to
know about a provider without switching on its name: its wire format, how it is
authenticated, its default base URL and API-key variable, the format of its error
bodies, where its prices are looked up, and how to build its ``Model``. A new
provider is one module declaring a spec and one line in ``_BUILTIN`` (or, outside
tether, one ``register(spec)`` call)::

    register(ProviderSpec(kind="anthropic", wire="anthropic", auth=ApiKeyHeader("x-api-key"), ...))

Built-in providers are imported on the first look-up, so importing this module
loads no HTTP client.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from tether.config import ProviderSettings, closest
from tether.errors import ConfigError
from tether.messages import Usage
from tether.models.base import Model, ProviderConfig
from tether.pricing import PriceRef, price_usage

__all__ = [
    "ApiKeyHeader",
    "Auth",
    "ErrorFormat",
    "ModelFactory",
    "NoAuth",
    "Pricing",
    "ProviderSpec",
    "SignedRequests",
    "Wire",
    "guess_price_provider",
    "provider_kinds",
    "provider_spec",
    "register",
    "unknown_kind",
    "warn_if_unpriced",
]

Wire = Literal["anthropic", "openai"]
"""The HTTP API a provider speaks: Anthropic Messages or OpenAI Chat Completions."""
ErrorFormat = Literal["anthropic", "openai"]
"""The shape of a provider's error bodies (``{"type": "error", "error": ...}`` or ``{"error": ...}``)."""

_BUILTIN: Final = ("tether.models.anthropic", "tether.models.openai", "tether.models.sim")
_log = logging.getLogger("tether.models")


@dataclass(frozen=True)
class ApiKeyHeader:
    """The key is sent in one header, after an optional prefix (``authorization: Bearer <key>``)."""

    header: str
    prefix: str = ""

    def headers(self, key: str | None) -> dict[str, str]:
        """The headers that carry ``key`` (none without one)."""
        return {self.header: f"{self.prefix}{key}"} if key else {}


@dataclass(frozen=True)
class NoAuth:
    """Nothing to send: the provider needs no credential (the simulated model)."""

    def headers(self, key: str | None) -> dict[str, str]:
        """No headers, whatever ``key`` is."""
        return {}


@dataclass(frozen=True)
class SignedRequests:
    """Each request is signed from its method, URL, headers and body (AWS SigV4 and the like).

    Room for such providers; no built-in provider signs yet, so ``headers`` refuses.
    """

    scheme: str
    service: str | None = None

    def headers(self, key: str | None) -> dict[str, str]:
        """Refused: a signature covers the request, so it cannot be made from a key alone."""
        raise ConfigError(f"{self.scheme} request signing is not supported yet: use an API-key provider")


Auth = ApiKeyHeader | NoAuth | SignedRequests


@dataclass(frozen=True)
class Pricing:
    """Where a provider's calls are priced.

    Attributes:
        provider_id: the genai-prices provider id; None: guessed from the model's name
            (the simulated model is priced as the real model it names).
        default_base_url_only: priced only at the provider's own base URL (an ``openai`` kind pointed
            at vLLM or Ollama is not billed at OpenAI's prices).
    """

    provider_id: str | None
    default_base_url_only: bool = False


ModelFactory = Callable[["ProviderSpec", ProviderSettings, str, ProviderConfig], Model]
"""``factory(spec, settings, model_name, config)``: the ``Model`` for one model at one provider."""


@dataclass(frozen=True)
class ProviderSpec:
    """One provider: everything tether knows about it, in one place.

    Attributes:
        kind: its name in ``[providers.<name>] kind`` and in ``provider:model`` references.
        wire: the HTTP API it speaks; None for a provider with no wire (the simulated model).
        auth: how a request carries the credential.
        default_base_url: where it is when ``base_url`` is not given.
        default_key_env: the variable holding its key when ``api_key_env`` is not given (None: no key).
        error_format: the shape of its error bodies (for injected faults and the proxy).
        pricing: where its prices come from.
        factory: builds its ``Model``.
        keyless_at_custom_base_url: with a ``base_url`` of its own and no ``api_key_env`` it sends
            no key (self-hosted OpenAI-compatible servers need none).
    """

    kind: str
    wire: Wire | None
    auth: Auth
    default_base_url: str
    default_key_env: str | None
    error_format: ErrorFormat
    pricing: Pricing
    factory: ModelFactory
    keyless_at_custom_base_url: bool = False

    def base_url(self, settings: ProviderSettings) -> str:
        """The base URL calls go to."""
        return settings.base_url or self.default_base_url

    def key_env(self, settings: ProviderSettings) -> str | None:
        """The variable the key is read from; None when no key is sent."""
        if settings.auth == "none" or isinstance(self.auth, NoAuth):
            return None
        if settings.api_key_env is not None:
            return settings.api_key_env
        if settings.auth == "default" and self.keyless_at_custom_base_url and settings.base_url is not None:
            return None
        return self.default_key_env

    def provider_config(
        self, settings: ProviderSettings, *, name: str | None = None, timeout_s: float | None = None
    ) -> ProviderConfig:
        """Where and as whom to call it (``name``: the ``[providers.<name>]`` the key is scrubbed as)."""
        return ProviderConfig(
            base_url=self.base_url(settings),
            api_key_env=self.key_env(settings),
            timeout_s=timeout_s or settings.timeout_s,
            name=name,
        )

    def build(
        self, settings: ProviderSettings, model: str, *, name: str | None = None, timeout_s: float | None = None
    ) -> Model:
        """The ``Model`` for ``model`` at this provider."""
        return self.factory(self, settings, model, self.provider_config(settings, name=name, timeout_s=timeout_s))

    def price_ref(self, model: str, base_url: str | None = None) -> PriceRef | None:
        """Where a call to ``model`` (at ``base_url``, when not the default) is priced; None: not priced."""
        if self.pricing.default_base_url_only and base_url not in (None, self.default_base_url):
            return None
        if self.pricing.provider_id is None:
            guessed = guess_price_provider(model)
            return PriceRef(provider_id=guessed, model_ref=model) if guessed else None
        return PriceRef(provider_id=self.pricing.provider_id, model_ref=model)


_specs: dict[str, ProviderSpec] = {}
_lock = threading.Lock()
_loaded = False


def register(spec: ProviderSpec) -> ProviderSpec:
    """Make ``spec`` known by its kind (registering a kind again replaces it); returns ``spec``."""
    with _lock:
        _specs[spec.kind] = spec
    return spec


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN:
            importlib.import_module(module)
        _loaded = True


def provider_kinds() -> list[str]:
    """Every registered provider kind, sorted."""
    _load_builtins()
    return sorted(_specs)


def unknown_kind(kind: str) -> str | None:
    """None when ``kind`` is registered; otherwise what to write instead, for a message."""
    kinds = provider_kinds()
    if kind in kinds:
        return None
    guess = closest(kind, kinds)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return f"unknown provider kind {kind!r} (known: {', '.join(kinds)}){hint}"


def provider_spec(kind: str) -> ProviderSpec:
    """The spec registered for ``kind``.

    Raises:
        ConfigError: no provider of that kind, with the known kinds and a "did you mean".
    """
    _load_builtins()
    spec = _specs.get(kind)
    if spec is None:
        raise ConfigError(unknown_kind(kind) or f"unknown provider kind {kind!r}")
    return spec


def guess_price_provider(model_name: str) -> str | None:
    """The genai-prices provider a model name belongs to by its family (``claude-*``: anthropic), or None."""
    name = model_name.lower()
    if name.startswith("claude"):
        return "anthropic"
    if name.startswith(("gpt-", "o1", "o3", "o4")):
        return "openai"
    if name.startswith("gemini"):
        return "google"
    return None


_warned: set[tuple[str, str]] = set()


def _known_models(provider_id: str) -> list[str]:
    from genai_prices.data_snapshot import get_snapshot

    for provider in get_snapshot().providers:
        if provider.id == provider_id:
            return [model.id for model in provider.models]
    return []


def warn_if_unpriced(model: Model, *, configured: bool = False) -> bool:
    """Warn once (``tether.models`` logger, WARNING) when ``model`` is meant to be priced and has no price.

    A model name genai-prices does not know is usually a typo (``claude-sonet-4-5``); the
    warning names the closest known model. ``configured``: a ``[prices."<model>"]`` entry covers it.

    Returns:
        Whether it warned (now or before) about this model.
    """
    ref = model.price_ref
    if ref is None or configured or price_usage(ref, Usage(input_tokens=1)).known:
        return False
    key = (ref.provider_id, ref.model_ref)
    with _lock:
        if key in _warned:
            return True
        _warned.add(key)
    guess = closest(ref.model_ref, _known_models(ref.provider_id))
    hint = f"; did you mean {model.provider}:{guess}?" if guess else ""
    _log.warning(
        "model %s has no price (genai-prices knows no %s model %r), so its calls will cost nothing in "
        'budgets and reports%s (or add [prices."%s"] to tether.toml)',
        model.ref,
        ref.provider_id,
        ref.model_ref,
        hint,
        ref.model_ref,
    )
    return True
