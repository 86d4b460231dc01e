"""Model providers, one module per wire format, and the reference resolver.

A model reference is ``provider:model``:

- ``anthropic:claude-sonnet-4-5`` — Anthropic Messages API (``ANTHROPIC_API_KEY``)
- ``openai:gpt-4o`` — OpenAI Chat Completions (``OPENAI_API_KEY``)
- ``openai:llama3@http://127.0.0.1:11434/v1`` — any OpenAI-compatible server
  (vLLM, Ollama, llama.cpp); no key needed, not priced
- ``sim:claude-sonnet-4-5`` — the simulated model, priced as the model it names

The providers are registered in ``tether.models.registry``, one ``ProviderSpec`` per provider module.
"""

from __future__ import annotations

from tether.config import ProviderSettings, closest
from tether.errors import UnknownModelError
from tether.models.base import Model, ProviderConfig

__all__ = ["Model", "ProviderConfig", "resolve_model"]


def resolve_model(ref: str) -> Model:
    """Build the model a ``provider:model`` reference names (``tether.models.registry`` knows the providers).

    A model with no price (a typo such as ``claude-sonet-4-5``) is built, with one warning
    naming the closest priced model (``tether.models.registry.warn_if_unpriced``).

    Raises:
        UnknownModelError: the reference has no provider prefix or names an unknown provider.
    """
    from tether.models.registry import provider_kinds, provider_spec, warn_if_unpriced

    provider, sep, name = ref.partition(":")
    if not sep or not name:
        raise UnknownModelError(
            f"model reference {ref!r} has no provider: write it as provider:model, "
            f"e.g. sim:claude-sonnet-4-5 or anthropic:claude-sonnet-4-5 (providers: {', '.join(provider_kinds())})"
        )
    kinds = provider_kinds()
    if provider not in kinds:
        guess = closest(provider, kinds)
        hint = f"; did you mean {guess}:{name}?" if guess else ""
        raise UnknownModelError(
            f"unknown provider {provider!r} in model reference {ref!r}: use one of {', '.join(kinds)}{hint}"
        )
    spec = provider_spec(provider)
    settings = ProviderSettings(kind=provider)
    model_name, at, base_url = name.partition("@")
    if at:
        if spec.wire is None or not spec.keyless_at_custom_base_url:
            raise UnknownModelError(f"model reference {ref!r}: {provider} models take no '@<base URL>'")
        if not base_url.startswith(("http://", "https://")):
            raise UnknownModelError(f"model reference {ref!r}: the part after '@' must be an http(s) base URL")
        settings = ProviderSettings(kind=provider, base_url=base_url)
    else:
        model_name = name
    model = spec.build(settings, model_name)
    warn_if_unpriced(model)
    return model
