"""Shared helpers for the provider adapter tests: payload files and a recording mock server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

PAYLOADS = Path(__file__).parent / "payloads"

SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8"}
JSON_HEADERS = {"content-type": "application/json"}


def payload(name: str) -> bytes:
    """The raw bytes of a fixture under ``payloads/``."""
    return (PAYLOADS / name).read_bytes()


def payload_json(name: str) -> Any:
    return orjson.loads(payload(name))


async def collect(stream: AsyncIterator[Any], into: list[Any] | None = None) -> list[Any]:
    """Drain a model stream; ``into`` keeps the events seen before an exception."""
    events = [] if into is None else into
    async for event in stream:
        events.append(event)
    return events


def cut_before(stream: bytes, marker: bytes) -> bytes:
    """The stream up to (not including) the event line that contains ``marker``."""
    position = stream.index(marker)
    return stream[: stream.rindex(b"\n\n", 0, position) + 2]


class BrokenBody(httpx.AsyncByteStream):
    """A response body that sends some bytes and then fails like a dropped connection."""

    def __init__(self, data: bytes, error: Exception) -> None:
        self._data = data
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data
        raise self._error


Handler = Callable[[httpx.Request], httpx.Response]


class MockServer:
    """An ``httpx.MockTransport`` that records every request and answers with ``handler``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.handler: Handler = lambda request: httpx.Response(500, text="no handler set")
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self._handle))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def reply(self, status: int = 200, *, content: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer every request with this status, body and headers."""
        self.handler = lambda request: httpx.Response(status, content=content, headers=headers or JSON_HEADERS)

    def reply_json(self, name: str, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.reply(status, content=payload(name), headers={**JSON_HEADERS, **(headers or {})})

    def reply_sse(self, data: bytes) -> None:
        self.reply(200, content=data, headers=SSE_HEADERS)

    def reply_broken(self, data: bytes, error: Exception) -> None:
        self.handler = lambda request: httpx.Response(200, stream=BrokenBody(data, error), headers=SSE_HEADERS)

    def fail(self, error: Exception) -> None:
        """Fail every request at the transport level (timeout, refused connection)."""

        def handler(request: httpx.Request) -> httpx.Response:
            raise error

        self.handler = handler

    @property
    def request(self) -> httpx.Request:
        """The one request sent so far."""
        assert len(self.requests) == 1, f"expected exactly one request, got {len(self.requests)}"
        return self.requests[0]

    @property
    def body(self) -> Any:
        """The JSON body of the one request sent so far."""
        return orjson.loads(self.request.content)

    async def aclose(self) -> None:
        await self.client.aclose()
