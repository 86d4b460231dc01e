"""Helpers for the proxy tests: a recording mock upstream, the proxy under uvicorn, fake virtual keys.

Everything listens on 127.0.0.1 with a port the OS picks; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
import uvicorn
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Tracer

from tether.config import GatewayConfig
from tether.gateway.gateway import Gateway
from tether.gateway.keys import VirtualKey
from tether.models.base import Model
from tether.server.proxy import create_app
from tether.testing import SpanCapture

PAYLOADS = Path(__file__).resolve().parents[1] / "models" / "payloads"

OPENAI_PROVIDER_KEY = "sk-provider-openai-0123456789abcdef"
ANTHROPIC_PROVIDER_KEY = "sk-ant-provider-0123456789abcdef"
ALICE = "tk-alice-secret-0123456789abcdefghijklmnopqrstuv"
BOB = "tk-bob-secret-0123456789abcdefghijklmnopqrstuvwxy"

# Cheap, known prices so spend is exact and never unknown for the OpenAI-format deployments
# (a self-hosted OpenAI-compatible server is otherwise unpriced).
PRICES = {
    "gpt-4.1": {"input_per_mtok": 2, "output_per_mtok": 8, "cache_read_per_mtok": 0.5},
}


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def sse_events(name: str) -> list[bytes]:
    """The events of an .sse fixture, comments dropped, each ending with its blank line."""
    text = payload(name).decode()
    blocks = [b for b in text.split("\n\n") if b.strip() and not all(line.startswith(":") for line in b.splitlines())]
    return [(b.strip("\n") + "\n\n").encode() for b in blocks]


def set_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_TEST_OPENAI_KEY", OPENAI_PROVIDER_KEY)
    monkeypatch.setenv("TETHER_TEST_ANTHROPIC_KEY", ANTHROPIC_PROVIDER_KEY)


@dataclass
class Recorded:
    """One request the mock upstream received."""

    path: str
    headers: dict[str, str]
    body: bytes
    peer: Any = None  # the proxy's (host, port): the same port means the same kept-alive connection

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_reply(body: bytes | dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> Responder:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(body=raw, status=status, content_type="application/json", headers=headers)

    return respond


def raw_reply(body: bytes, *, status: int = 200, content_type: str = "text/html") -> Responder:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type=content_type)

    return respond


def sse_reply(
    events: Sequence[bytes],
    *,
    stop_after: int | None = None,
    abort: bool = False,
    hold: asyncio.Event | None = None,
    gone: asyncio.Event | None = None,
    linger_s: float = 0.0,
) -> Responder:
    """Stream ``events``; ``stop_after`` ends cleanly after that many (no end marker), ``abort``
    then drops the connection without ending the body; ``hold`` waits before the rest and sets
    ``gone`` when the proxy goes away while held; ``linger_s`` waits between the last event and
    the end of the body (as a real server may)."""

    async def respond(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(events):
            if stop_after is not None and i == stop_after:
                if abort:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                break
            if hold is not None and i == 2:
                while not hold.is_set():
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        if gone is not None:
                            gone.set()
                        return response
                    await asyncio.sleep(0.01)
            await response.write(event)
        if linger_s:
            await asyncio.sleep(linger_s)
        await response.write_eof()
        return response

    return respond


class MockUpstream:
    """An aiohttp server standing in for OpenAI and Anthropic; records what it receives.

    ``on(path, *responders)``: the responders answer in turn, the last one from then on.
    """

    def __init__(self, *, record: bool = True) -> None:
        self.record = record
        self.requests: list[Recorded] = []
        self._routes: dict[str, list[Responder]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def on(self, path: str, *responders: Responder) -> None:
        self._routes[path] = list(responders)

    def received(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.record:
            peer = request.transport.get_extra_info("peername") if request.transport is not None else None
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(Recorded(request.path, headers, body, peer))
        queue = self._routes.get(request.path)
        if not queue:
            return web.Response(status=404, text=f"mock upstream: nothing at {request.path}")
        responder = queue.pop(0) if len(queue) > 1 else queue[0]
        return await responder(request)

    async def __aenter__(self) -> MockUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class FakeKeys:
    """A ``KeyVerifier`` over a fixed table (the real ``KeyStore`` is tested on its own)."""

    def __init__(self, keys: dict[str, VirtualKey] | None = None) -> None:
        self.keys = keys if keys is not None else {ALICE: VirtualKey(id="k1", name="alice", prefix="tk-alice")}
        self.calls = 0

    async def verify(self, secret: str) -> VirtualKey | None:
        self.calls += 1
        return self.keys.get(secret)


def base_config(upstream: str, *, routes: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Providers at the mock upstream (and a simulated one), one deployment each, a route per deployment."""
    config: dict[str, Any] = {
        "providers": {
            "oai": {"kind": "openai", "base_url": f"{upstream}/v1", "api_key_env": "TETHER_TEST_OPENAI_KEY"},
            "oai-down": {"kind": "openai", "base_url": f"{upstream}/down/v1", "api_key_env": "TETHER_TEST_OPENAI_KEY"},
            "ant": {"kind": "anthropic", "base_url": upstream, "api_key_env": "TETHER_TEST_ANTHROPIC_KEY"},
            "sim": {"kind": "sim"},
        },
        "deployments": {
            # An OpenAI-compatible server at a custom URL: no price list entry, so no known context
            # window; its output cap is what bounds a budgeted request that names no max_tokens.
            "gpt": {"provider": "oai", "model": "gpt-4.1", "max_output_tokens": 4096},
            "gpt-down": {"provider": "oai-down", "model": "gpt-4.1", "max_output_tokens": 4096},
            "claude": {"provider": "ant", "model": "claude-sonnet-4-5"},
            "sim-claude": {"provider": "sim", "model": "claude-sonnet-4-5"},
        },
        "routes": routes
        or {
            "fast": {"tiers": [["gpt"]], "retry": {"max_retries": 0}},
            "smart": {"tiers": [["claude"]], "retry": {"max_retries": 0}},
            "sim": {"tiers": [["sim-claude"]]},
        },
        "prices": PRICES,
    }
    config.update(extra)
    return config


@dataclass
class Env:
    """A running proxy and what it talks to."""

    url: str
    upstream: MockUpstream
    gateway: Gateway
    spans: SpanCapture
    keys: FakeKeys
    app: Any
    clients: list[Any] = field(default_factory=list)

    def openai(self, key: str = ALICE, **kwargs: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=10, **kwargs)
        self.clients.append(client)
        return client

    def anthropic(self, key: str = ALICE, **kwargs: Any) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(base_url=self.url, api_key=key, max_retries=0, timeout=10, **kwargs)
        self.clients.append(client)
        return client

    async def chat_spans(self, count: int = 1, timeout_s: float = 5.0) -> list[ReadableSpan]:
        """The finished chat spans, once there are ``count`` (the proxy ends a span after it answers)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans.by_operation("chat")
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            await asyncio.sleep(0.01)

    @property
    def metrics(self) -> Any:
        return self.app.state.proxy.metrics


class ProxyServer:
    """The proxy app under uvicorn (httptools, lifespan on) on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProxyServer:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
        # and without it every response waits out the client's delayed ACK (~40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, lifespan="on", log_config=None, log_level="warning", http="httptools", ws="none", loop="none"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
            assert time.monotonic() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task


@asynccontextmanager
async def running_proxy(
    config: Callable[[str], dict[str, Any]] | None = None,
    *,
    keys: FakeKeys | None = None,
    require_keys: bool = True,
    models: dict[str, Model] | None = None,
    tracer: Tracer | None = None,
    record: bool = True,
) -> AsyncIterator[Env]:
    """A mock upstream, a gateway configured against it, and the proxy in front, all on loopback."""
    capture = SpanCapture()
    keys = keys if keys is not None else FakeKeys()
    async with MockUpstream(record=record) as upstream:
        gateway = Gateway(GatewayConfig.model_validate((config or base_config)(upstream.url)), models=models)
        app = create_app(
            gateway,
            keys=keys if require_keys else None,
            require_keys=require_keys,
            tracer=tracer if tracer is not None else capture.tracer,
        )
        env = Env(url="", upstream=upstream, gateway=gateway, spans=capture, keys=keys, app=app)
        try:
            async with ProxyServer(app) as server:
                env.url = server.url
                try:
                    yield env
                finally:
                    for client in env.clients:
                        await client.close()
        finally:
            await gateway.aclose()
            capture.shutdown()


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})
