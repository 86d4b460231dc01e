"""A mock OpenAI Chat Completions upstream, fast enough not to be the bottleneck.

A raw ``asyncio.Protocol`` HTTP/1.1 keep-alive server on uvloop, parsing with
httptools (both are tether dependencies), answering every
``POST .../chat/completions`` after a fixed latency (5 ms by default, a timer,
not a busy wait):

- non-streaming: a realistic ``chat.completion`` JSON body with ``usage``,
  including ``prompt_tokens_details.cached_tokens``;
- ``"stream": true``: ``chat.completion.chunk`` server-sent events (a role
  chunk, content chunks, a finish chunk: 10 in all), a usage chunk when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``; each event is
  its own HTTP chunk and its own socket write (TCP_NODELAY), so a proxy sees
  the stream arrive in pieces.

Run: ``python -m benchmarks._gateway.mock_upstream --port P [--latency-ms 5]``.
It prints ``ready <port>`` once listening, and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
import sys
import time
from typing import Any, cast

import httptools
import orjson
import uvloop

_IDS = itertools.count(1)
_CONTENT_PIECES = (
    "The checkout",
    " service's error",
    " rate rose to",
    " 12% after the",
    " 14:02 deploy;",
    " rolling back",
    " release 2026.11.3",
    " should restore it.",
)
_CONTENT = "".join(_CONTENT_PIECES)
PROMPT_TOKENS = 412
CACHED_TOKENS = 256
COMPLETION_TOKENS = 24


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_body(model: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "id": f"chatcmpl-mock{n:012d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _CONTENT, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_mock0001",
        }
    )


def stream_events(model: str, n: int, include_usage: bool) -> list[bytes]:
    """The SSE events of one streamed answer, each already framed as an HTTP/1.1 chunk."""
    base = {
        "id": f"chatcmpl-mock{n:012d}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_mock0001",
    }
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    chunks: list[dict[str, Any]] = [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": None}
            ],
            **extra,
        }
    ]
    chunks += [
        {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}], **extra}
        for piece in _CONTENT_PIECES
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage()})
    events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events]


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"x-request-id: mock\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


def _json_response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"x-request-id: mock\r\n"
        b"openai-processing-ms: 5\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class _Protocol(asyncio.Protocol):
    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.queue: list[tuple[bytes, bytes]] = []  # requests waiting behind one in flight (pipelining)
        self.busy = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_json_response(b"400 Bad Request", b'{"error":"bad request"}'))
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.queue.append((self.url, b"".join(self.body)))
        if not self.busy:
            self._next()

    # answering
    def _next(self) -> None:
        if not self.queue or self.transport is None:
            self.busy = False
            return
        self.busy = True
        url, body = self.queue.pop(0)
        self.server.requests += 1
        if not url.split(b"?", 1)[0].endswith(b"/chat/completions"):
            self._finish([_json_response(b"404 Not Found", b'{"error":{"message":"not found"}}')])
            return
        try:
            request = orjson.loads(body)
            model = str(request.get("model") or "gpt-4o-mini")
            stream = bool(request.get("stream"))
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        except (orjson.JSONDecodeError, AttributeError):
            self._finish([_json_response(b"400 Bad Request", b'{"error":{"message":"invalid JSON"}}')])
            return
        n = next(_IDS)
        if stream:
            parts = [_STREAM_HEAD, *stream_events(model, n, include_usage), _LAST_CHUNK]
        else:
            parts = [_json_response(b"200 OK", completion_body(model, n))]
        self.server.loop.call_later(self.server.latency_s, self._finish, parts)

    def _finish(self, parts: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for part in parts:  # one write per SSE event: the proxy sees them arrive separately
                self.transport.write(part)
        self._next()


class MockServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, latency_s: float) -> None:
        self.loop = loop
        self.latency_s = latency_s
        self.requests = 0


async def _serve(host: str, port: int, latency_s: float) -> None:
    loop = asyncio.get_running_loop()
    state = MockServer(loop, latency_s)
    server = await loop.create_server(lambda: _Protocol(state), host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {port}", flush=True)
    async with server:
        await stop.wait()
    print(f"served {state.requests} requests", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.host, args.port, args.latency_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
