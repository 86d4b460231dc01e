"""Model providers, one module per wire format, and the reference resolver.

A model reference is ``provider:model``:

- ``anthropic:claude-sonnet-4-5`` — Anthropic Messages API (``ANTHROPIC_API_KEY``)
- ``openai:gpt-4o`` — OpenAI Chat Completions (``OPENAI_API_KEY``)
- ``openai:llama3@http://127.0.0.1:11434/v1`` — any OpenAI-compatible server
  (vLLM, Ollama, llama.cpp); no key needed, not priced
- ``sim:claude-sonnet-4-5`` — the simulated model, priced as the model it names
"""

from __future__ import annotations

from tether.errors import UnknownModelError
from tether.models.base import Model, ProviderConfig

__all__ = ["Model", "ProviderConfig", "resolve_model"]

_PROVIDERS = ("anthropic", "openai", "sim")


def resolve_model(ref: str) -> Model:
    """Build the model a ``provider:model`` reference names.

    Raises:
        UnknownModelError: the reference has no provider prefix or names an unknown provider.
    """
    provider, sep, name = ref.partition(":")
    if not sep or not name:
        raise UnknownModelError(
            f"model reference {ref!r} has no provider: write it as provider:model, "
            f"e.g. sim:claude-sonnet-4-5 or anthropic:claude-sonnet-4-5 (providers: {', '.join(_PROVIDERS)})"
        )
    if provider == "sim":
        from tether.models.sim import SimModel

        return SimModel(name)
    if provider == "anthropic":
        from tether.models.anthropic import AnthropicModel

        return AnthropicModel(name)
    if provider == "openai":
        from tether.models.openai import OpenAIModel

        model_name, at, base_url = name.partition("@")
        if at:
            if not base_url.startswith(("http://", "https://")):
                raise UnknownModelError(f"model reference {ref!r}: the part after '@' must be an http(s) base URL")
            return OpenAIModel(model_name, config=ProviderConfig(base_url=base_url, api_key_env=None), price_ref=None)
        return OpenAIModel(model_name)
    raise UnknownModelError(
        f"unknown provider {provider!r} in model reference {ref!r}: use one of {', '.join(_PROVIDERS)}"
    )
