"""The model interface every provider adapter implements.

A model speaks one wire format. Credentials and the base URL live in a
separate ``ProviderConfig`` so one OpenAI-format adapter serves OpenAI, vLLM,
Ollama and llama.cpp servers.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tether.errors import ConfigError
from tether.messages import ModelRequest, ModelResponse, ResponseDone, StreamEvent
from tether.pricing import PriceRef
from tether.redaction import default_scrubber, register_credential

__all__ = ["Model", "ProviderConfig", "redact"]


@dataclass(frozen=True)
class ProviderConfig:
    """Where and as whom to call a provider.

    The key is read from the environment variable ``api_key_env`` when a call
    is made, so it is never stored on an object that might be logged. Every key
    read is registered with the process-wide scrubber (``tether.redaction``) as
    ``provider:<name>``, whatever its shape, so an upstream that echoes it (in a
    body, a header, an error) shows ``[secret:provider:<name>]`` in every record
    and response instead.

    Attributes:
        name: the provider's name in ``tether.toml`` (the label the key is scrubbed as);
            the variable's name when None.
    """

    base_url: str
    api_key_env: str | None = None
    timeout_s: float = 600.0
    extra_headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {self.api_key_env} is not set: export it with your API key, "
                "or use a 'sim:<model>' model to run without one"
            )
        # Registered at every read (a known value costs one dict lookup), so a rotated key is covered too.
        register_credential(f"provider:{self.name or self.api_key_env}", value)
        return value

    def register_key(self) -> None:
        """Register the key with the scrubber now if it is set (at start-up: before any call echoes it)."""
        if self.api_key_env is not None and os.environ.get(self.api_key_env):
            self.api_key()


_KEYLIKE = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9_\-\.]{8,})")


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Remove every registered secret (any encoding), the given values, and anything shaped like an API key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    # Then every registered value in every encoding (a provider key is registered when it is read).
    return _KEYLIKE.sub("[REDACTED]", default_scrubber().scrub(text))


class Model(ABC):
    """One model behind one wire format.

    Attributes:
        provider: provider name as it appears in ``gen_ai.provider.name``.
        model_name: the model name sent on the wire.
        price_ref: where its price is looked up; None when not priced.
        simulated: True only for the simulated model.
    """

    provider: str
    model_name: str
    price_ref: PriceRef | None = None
    simulated: bool = False

    @abstractmethod
    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one request and return the whole answer."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream one answer; the last event is always ``ResponseDone``.

        A stream cut before the provider's end marker raises
        ``StreamInterrupted``; it is never returned as a success. The default
        implementation yields the complete answer as one event.
        """
        response = await self.complete(request)
        yield ResponseDone(response=response)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most models hold nothing
        """Release connections; safe to call more than once."""

    @property
    def ref(self) -> str:
        return f"{self.provider}:{self.model_name}"
