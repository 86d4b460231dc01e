"""Upstream HTTP for the proxy: one shared aiohttp session, and failures mapped onto ``ModelError``.

aiohttp rather than httpx because the shared architecture measured a minimal
passthrough at ~6,000 req/s with an aiohttp session and ~600 with
``httpx.AsyncClient`` on the same machine (its pool is the bottleneck).

Every request goes to a URL taken from ``tether.toml`` (never from the client),
with the provider's key read from its environment variable at call time;
redirects are not followed, so an upstream cannot send the key elsewhere.
Error bodies are redacted before they go anywhere; the headers passed on are request ids only, scrubbed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson

from tether.errors import MalformedResponseError, ModelConnectionError, ModelHTTPError, ModelTimeoutError
from tether.models.base import redact
from tether.models.http import parse_retry_after
from tether.redaction import default_scrubber

__all__ = ["Upstream", "UpstreamReply", "UpstreamTimeouts", "kept_headers"]

_SNIPPET = 200
# Response headers worth handing back to the client: the provider's request id, for support tickets.
_KEPT_HEADERS = ("x-request-id", "request-id")


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """A deployment's aiohttp timeouts, made once (building them per request shows on the hot path).

    Attributes:
        seconds: the deployment's timeout.
        whole: for a complete answer: the whole call is bounded.
        stream: for a stream, which may legitimately run for minutes: only the wait between chunks is.
    """

    seconds: float
    whole: aiohttp.ClientTimeout
    stream: aiohttp.ClientTimeout

    @classmethod
    def of(cls, seconds: float) -> UpstreamTimeouts:
        connect = min(seconds, 30.0)
        return cls(
            seconds=seconds,
            whole=aiohttp.ClientTimeout(total=seconds, sock_connect=connect, sock_read=seconds),
            stream=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=seconds),
        )


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A complete 2xx answer: the body, what it parsed to, and the headers worth keeping."""

    body: bytes
    data: dict[str, Any]
    content_type: str
    headers: tuple[tuple[bytes, bytes], ...]


def kept_headers(headers: Mapping[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    """The upstream response headers the proxy passes on (request ids only), known secrets scrubbed."""
    scrub = default_scrubber().scrub
    return tuple(
        (name.encode(), scrub(headers[name]).encode("latin-1", "replace")) for name in _KEPT_HEADERS if name in headers
    )


class Upstream:
    """The proxy's upstream client: one ``aiohttp.ClientSession`` for every call.

    Args:
        limit: connections kept open at most, across all hosts.
        keepalive_s: how long an idle connection is kept for reuse.
    """

    def __init__(self, *, limit: int = 1024, keepalive_s: float = 60.0) -> None:
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session, created on first use (it must be made inside the running loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=self._keepalive_s, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def aclose(self) -> None:
        """Close the session and its connections; safe to call more than once."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def open(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeouts: UpstreamTimeouts,
        deployment: str,
        provider: str,
        secrets: Sequence[str],
        stream: bool,
    ) -> aiohttp.ClientResponse:
        """POST ``body`` and return the 2xx response with its body unread (the caller releases it).

        Raises:
            ModelTimeoutError: no answer in time.
            ModelConnectionError: no answer at all (refused, reset, DNS).
            ModelHTTPError: an error status; the body is read and redacted.
            MalformedResponseError: a redirect (not followed) or another non-2xx, non-error status.
        """
        timeout = timeouts.stream if stream else timeouts.whole
        timeout_s = timeouts.seconds
        try:
            response = await self.session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
        except TimeoutError as exc:
            raise ModelTimeoutError(
                f"deployment {deployment} ({provider}) did not answer within {timeout_s:g}s", provider=provider
            ) from exc
        except aiohttp.ClientError as exc:
            # The OS's reason only: aiohttp's own text names the upstream's host and port, and this
            # message can reach clients (503 bodies list what was tried).
            code = exc.errno if isinstance(exc, aiohttp.ClientOSError) else None
            reason = os.strerror(code) if code else None
            detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            raise ModelConnectionError(
                f"could not reach deployment {deployment} ({provider}): {detail}", provider=provider
            ) from exc
        if 200 <= response.status < 300:
            return response
        try:
            try:
                text = (await response.read()).decode("utf-8", "replace")
            except (aiohttp.ClientError, TimeoutError):
                text = ""  # the status alone still says what happened
        finally:
            response.release()
        if response.status < 400:
            raise MalformedResponseError(
                f"deployment {deployment} ({provider}) answered HTTP {response.status}, which the gateway does not "
                "follow",
                provider=provider,
            )
        raise ModelHTTPError(
            response.status,
            redact(text, list(secrets)),
            provider=provider,
            retry_after=parse_retry_after(httpx.Headers(list(response.headers.items()))),
        )

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeouts: UpstreamTimeouts,
        deployment: str,
        provider: str,
        secrets: Sequence[str],
    ) -> UpstreamReply:
        """POST ``body`` and return the whole 2xx JSON answer.

        Raises what ``open`` raises, and ``MalformedResponseError`` (naming the
        deployment) when the body is not a JSON object, ``ModelConnectionError``
        when it is cut.
        """
        response = await self.open(
            url,
            body,
            headers,
            timeouts=timeouts,
            deployment=deployment,
            provider=provider,
            secrets=secrets,
            stream=False,
        )
        try:
            raw = await response.read()
        except TimeoutError as exc:
            raise ModelTimeoutError(
                f"deployment {deployment} ({provider}) did not finish its answer within {timeouts.seconds:g}s",
                provider=provider,
            ) from exc
        except aiohttp.ClientError as exc:
            raise ModelConnectionError(
                f"deployment {deployment} ({provider}) cut its answer short: {type(exc).__name__}", provider=provider
            ) from exc
        finally:
            response.release()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            snippet = redact(raw[:_SNIPPET].decode("utf-8", "replace"), list(secrets))
            raise MalformedResponseError(
                f"deployment {deployment} ({provider}) answered with a body that is not a JSON object: {snippet!r}",
                provider=provider,
            )
        return UpstreamReply(
            body=raw,
            data=data,
            content_type=response.headers.get("content-type", "application/json"),
            headers=kept_headers(response.headers),
        )
