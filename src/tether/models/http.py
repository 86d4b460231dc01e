"""Transport helpers shared by the HTTP provider adapters.

Server-sent-event decoding, the mapping of httpx failures and HTTP error
statuses onto tether's ``ModelError`` tree, ``Retry-After`` parsing and
lenient parsing of tool-call arguments. Every message that can leave this
module is passed through ``redact`` so an API key echoed back by a server
never ends up in an exception, a log line or a trace.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import httpx
import orjson

from tether.errors import MalformedResponseError, ModelConnectionError, ModelHTTPError, ModelTimeoutError
from tether.models.base import redact

__all__ = [
    "ServerSentEvent",
    "SSEDecoder",
    "count",
    "decode_json_object",
    "http_error",
    "iter_sse",
    "open_stream",
    "parse_retry_after",
    "parse_tool_arguments",
    "post_json",
    "transport_error",
]

_SNIPPET = 200


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched SSE event: its ``event:`` name (None if absent) and joined ``data:`` lines."""

    event: str | None
    data: str


class SSEDecoder:
    """Line-by-line decoder following the WHATWG event-stream interpretation rules.

    Only ``event`` and ``data`` fields matter to the providers; ``id`` and
    ``retry`` are ignored, as are comment lines (``: keep-alive``).
    """

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        """Consume one line (without its terminator); return an event when a blank line completes one."""
        if not line:
            # The spec dispatches nothing for an event without data lines.
            event = ServerSentEvent(event=self._event, data="\n".join(self._data)) if self._data else None
            self._event = None
            self._data = []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


async def iter_sse(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """Yield the events of a streamed response.

    An event still being assembled when the body ends was never terminated by
    a blank line; per the SSE spec it is discarded, so a body cut in the
    middle of an event never yields half a JSON document.
    """
    decoder = SSEDecoder()
    async for line in response.aiter_lines():
        event = decoder.feed(line)
        if event is not None:
            yield event


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait before retrying, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be delta-seconds or an HTTP date (RFC 9110 §10.2.3);
    OpenAI also sends the non-standard, more precise ``retry-after-ms``.
    Returns None when absent or unparseable; never a negative number.
    """
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis)
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value / 1000.0, 0.0)
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def _secrets(secrets: Sequence[str | None]) -> list[str]:
    return [s for s in secrets if s]


def http_error(
    provider: str, status: int, body: str, headers: httpx.Headers, secrets: Sequence[str | None]
) -> ModelHTTPError:
    """Build the ``ModelHTTPError`` for a non-2xx answer, with the body redacted."""
    return ModelHTTPError(
        status,
        redact(body, _secrets(secrets)),
        provider=provider,
        retry_after=parse_retry_after(headers),
    )


def transport_error(
    provider: str, exc: httpx.TransportError, timeout_s: float, secrets: Sequence[str | None]
) -> ModelTimeoutError | ModelConnectionError:
    """Map an httpx failure that produced no HTTP answer onto tether's error tree."""
    detail = redact(str(exc) or type(exc).__name__, _secrets(secrets))
    if isinstance(exc, httpx.TimeoutException):
        return ModelTimeoutError(
            f"{provider} did not answer within {timeout_s:g}s ({type(exc).__name__}: {detail})", provider=provider
        )
    return ModelConnectionError(f"could not reach {provider} ({type(exc).__name__}: {detail})", provider=provider)


def decode_json_object(data: str | bytes, *, provider: str, what: str, secrets: Sequence[str | None]) -> dict[str, Any]:
    """Parse ``data`` as a JSON object or raise ``MalformedResponseError``."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        snippet = redact(text[:_SNIPPET], _secrets(secrets))
        raise MalformedResponseError(
            f"{provider} sent {what} that is not a JSON object: {snippet!r}", provider=provider
        )
    return value


def parse_tool_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """Parse model-written tool arguments leniently.

    Returns ``(arguments, None)`` for a JSON object and ``({}, raw)`` for
    anything else, so a malformed call reaches the agent loop (which tells
    the model) instead of failing the whole model call. An empty string is
    the no-argument call some servers emit and parses as ``{}``.
    """
    if not raw.strip():
        return {}, None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}, raw
    if isinstance(value, dict):
        return value, None
    return {}, raw


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    timeout_s: float,
    provider: str,
    secrets: Sequence[str | None],
) -> dict[str, Any]:
    """POST a JSON body and return the JSON object answered, mapping every failure."""
    try:
        response = await client.post(url, headers=dict(headers), content=orjson.dumps(body), timeout=timeout_s)
    except httpx.TransportError as exc:
        raise transport_error(provider, exc, timeout_s, secrets) from exc
    if not response.is_success:
        raise http_error(provider, response.status_code, response.text, response.headers, secrets)
    return decode_json_object(response.content, provider=provider, what="a response body", secrets=secrets)


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    timeout_s: float,
    provider: str,
    secrets: Sequence[str | None],
) -> AsyncIterator[httpx.Response]:
    """POST a JSON body and hand over the 2xx streaming response; always closes it.

    Failures before the response headers arrive map like ``post_json``; an
    error status is read in full and raised as ``ModelHTTPError``. Failures
    while the body streams are the caller's to map (to ``StreamInterrupted``).
    """
    request = client.build_request("POST", url, headers=dict(headers), content=orjson.dumps(body), timeout=timeout_s)
    try:
        response = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise transport_error(provider, exc, timeout_s, secrets) from exc
    try:
        if not response.is_success:
            try:
                await response.aread()
                text = response.text
            except httpx.TransportError:
                text = ""  # the status alone still says what happened
            raise http_error(provider, response.status_code, text, response.headers, secrets)
        yield response
    finally:
        await response.aclose()


def count(value: object) -> int:
    """A token count from a usage field; optional and nullable fields count as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
