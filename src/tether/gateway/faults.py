"""Fault injection per deployment, for tests and operators' chaos drills.

``FaultyModel(inner, FaultConfig(error_rate=0.2, latency_ms=300))`` behaves
like ``inner`` except that, on each call, it may first sleep and then fail the
way a provider does: an HTTP error with a realistic body (and Retry-After for
429, 503 and 529), a timeout, a body that cannot be parsed, or, for streams, a
cut partway through. A call no fault hits goes to ``inner`` unchanged; an
injected failure never reaches ``inner``, so a drill against a real provider
spends nothing on the failed calls.

Order within a call: latency, then one roll each for error, timeout and
malformed body (the first that fires is raised), then the real call; a stream
also rolls for a cut.

Callers that make the provider call themselves — the proxy's passthrough path,
which forwards the client's bytes instead of calling ``inner`` — call
``inject()`` first: it takes the call's number, sleeps, raises, and rolls for
a cut exactly as ``complete`` and ``stream`` do, and returns where the caller
must cut its stream (None: do not cut).

Reproducibility. Every call takes the next number from the model's call
counter when it starts, before any await, and each decision of that call draws
from its own ``random.Random`` seeded with a blake2b hash of (``seed``, the
inner model's ``provider:model``, call number, decision name), as the
simulated model does. So for a given seed, model and order in which calls
start (through ``complete``, ``stream`` or ``inject``: they share the
counter, so a proxy's passthrough and translated calls to one deployment are
one sequence), the same calls fail the same way, in any process; each decision is
drawn apart, so turning on one fault does not move where another fires; and
two deployments with the same seed fail independently. Rates of 0 and 1 are
exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
from collections.abc import AsyncIterator
from typing import Final

from tether.config import FaultConfig
from tether.errors import MalformedResponseError, ModelHTTPError, ModelTimeoutError, StreamInterrupted
from tether.messages import ModelRequest, ModelResponse, ResponseDone, StreamEvent, TextDelta
from tether.models.base import Model

__all__ = ["FaultyModel"]

_RETRY_AFTER_STATUSES: Final = frozenset({429, 503, 529})

# (Anthropic error type, OpenAI error type) per status, as the providers send them.
_ERROR_TYPES: Final = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "invalid_request_error"),
    403: ("permission_error", "invalid_request_error"),
    404: ("not_found_error", "invalid_request_error"),
    408: ("timeout_error", "server_error"),
    409: ("api_error", "server_error"),
    413: ("request_too_large", "invalid_request_error"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("api_error", "server_error"),
    502: ("api_error", "server_error"),
    503: ("overloaded_error", "server_error"),
    504: ("timeout_error", "server_error"),
    529: ("overloaded_error", "server_error"),
}

# What a proxy or load balancer in front of a provider sends when it breaks.
_GARBAGE_BODY: Final = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"


class _Call:
    """The seeded decisions of one call."""

    __slots__ = ("_key",)

    def __init__(self, seed: int, model_ref: str, number: int) -> None:
        self._key = _digest("faults", seed, model_ref, number)

    def rng(self, decision: str) -> random.Random:
        return random.Random(int.from_bytes(_digest(self._key, decision, size=8), "big"))

    def roll(self, decision: str, rate: float) -> bool:
        # Rates of 0 and 1 need no draw and are exact: random() is in [0, 1).
        if rate <= 0.0:
            return False
        return rate >= 1.0 or self.rng(decision).random() < rate


def _digest(*parts: object, size: int = 16) -> bytes:
    """A stable hash of ``parts``; each is length-prefixed so boundaries cannot blur."""
    h = hashlib.blake2b(digest_size=size)
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def _error_format(provider: str) -> str:
    """The shape of ``provider``'s error bodies (its registered spec's); Anthropic's for a provider not registered."""
    from tether.models.registry import provider_kinds, provider_spec

    return provider_spec(provider).error_format if provider in provider_kinds() else "anthropic"


class FaultyModel(Model):
    """Wraps a Model and injects faults before (or, for streams, during) the real call.

    Args:
        inner: the model that answers when no fault fires.
        faults: what to inject; see ``FaultConfig`` and the module docstring.
    """

    def __init__(self, inner: Model, faults: FaultConfig) -> None:
        self.inner = inner
        self.faults = faults
        self.provider = inner.provider
        self.model_name = inner.model_name
        self.price_ref = inner.price_ref
        self.simulated = inner.simulated
        self._calls = itertools.count()

    def __repr__(self) -> str:
        return f"FaultyModel({self.inner!r}, {self.faults!r})"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Inject latency and failures, then ask ``inner``."""
        if self.faults.active:
            await self._before(self._next_call())
        return await self.inner.complete(request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Inject latency and failures, then stream ``inner``, maybe cutting it.

        A cut stream yields ``stream_cut_after`` events and raises
        ``StreamInterrupted`` with the text streamed so far; a stream with
        fewer events is cut just before its ``ResponseDone``, so a cut stream
        never ends in success.
        """
        faults = self.faults
        cut = await self.inject() is not None
        events = self.inner.stream(request)
        sent = 0
        text: list[str] = []
        try:
            if cut and faults.stream_cut_after == 0:
                raise self._cut(sent, text)
            async for event in events:
                if cut and isinstance(event, ResponseDone):
                    raise self._cut(sent, text)
                if isinstance(event, TextDelta):
                    text.append(event.text)
                sent += 1
                yield event
                if cut and sent >= faults.stream_cut_after:
                    raise self._cut(sent, text)
            if cut:
                # Only a broken inner stream ends without ResponseDone; it is still a cut one.
                raise self._cut(sent, text)
        finally:
            # Close the inner stream now, not at garbage collection, so its connection is released.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def inject(self) -> int | None:
        """The faults of one call whose provider request the caller makes itself (the proxy's passthrough).

        Takes the next call number (before any await), sleeps the injected
        latency and raises the first injected failure that fires, exactly as
        ``complete`` and ``stream`` do before calling ``inner``; a caller that
        gets an exception must not make the provider call.

        Returns:
            ``stream_cut_after`` when this call's stream must be cut (the same
            seeded roll ``stream`` makes; a caller that does not stream ignores
            it): relay that many events, or stop just before the end marker if
            there are fewer, then fail the stream. None: do not cut.
        """
        faults = self.faults
        if not faults.active:
            return None
        call = self._next_call()
        await self._before(call)
        return faults.stream_cut_after if call.roll("stream_cut", faults.stream_cut_rate) else None

    async def aclose(self) -> None:
        """Close ``inner``."""
        await self.inner.aclose()

    def _next_call(self) -> _Call:
        return _Call(self.faults.seed, self.inner.ref, next(self._calls))

    async def _before(self, call: _Call) -> None:
        """Sleep the injected latency, then raise the first injected failure that fires."""
        faults = self.faults
        delay_ms = faults.latency_ms
        if faults.latency_jitter_ms > 0:
            jitter = faults.latency_jitter_ms
            delay_ms += call.rng("latency").uniform(-jitter, jitter)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        if call.roll("error", faults.error_rate):
            raise self._http_error(call.rng("error_status").choice(faults.error_statuses))
        if call.roll("timeout", faults.timeout_rate):
            if faults.timeout_after_s > 0:
                await asyncio.sleep(faults.timeout_after_s)
            raise ModelTimeoutError(
                f"injected fault: {self.ref} did not answer within {faults.timeout_after_s:g}s",
                provider=self.provider,
            )
        if call.roll("malformed", faults.malformed_rate):
            # Worded as the adapters word it (models/http.py decode_json_object).
            raise MalformedResponseError(
                f"{self.provider} sent a response body that is not a JSON object: {_GARBAGE_BODY!r}",
                provider=self.provider,
            )

    def _cut(self, sent: int, text: list[str]) -> StreamInterrupted:
        return StreamInterrupted(
            f"injected fault: {self.ref} stream cut after {sent} events",
            provider=self.provider,
            partial_text="".join(text),
        )

    def _http_error(self, status: int) -> ModelHTTPError:
        """The error an adapter raises for ``status``, with a body in the provider's format."""
        anthropic_type, openai_type = _ERROR_TYPES.get(status, ("api_error", "server_error"))
        message = f"injected fault: HTTP {status} from {self.ref}"
        body: dict[str, object]
        if _error_format(self.provider) == "openai":
            body = {"error": {"message": message, "type": openai_type, "param": None, "code": None}}
        else:
            body = {"type": "error", "error": {"type": anthropic_type, "message": message}}
        retry_after = self.faults.retry_after_s if status in _RETRY_AFTER_STATUSES else None
        return ModelHTTPError(status, json.dumps(body), provider=self.provider, retry_after=retry_after)
