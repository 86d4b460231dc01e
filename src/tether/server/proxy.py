"""The model API of ``tether serve``: an HTTP proxy that speaks the OpenAI and Anthropic wire formats unchanged.

Agents not built with tether point their SDK's ``base_url`` here and present a
tether virtual key; every call then goes through the gateway (routing,
fallbacks, breakers, rate limits, budgets, cost, traces).

Endpoints::

    POST /v1/chat/completions   OpenAI Chat Completions (stream or not)
    POST /v1/messages           Anthropic Messages (stream or not)
    GET  /v1/models             the routes the key may use, as an OpenAI model list
                                (Anthropic's list format when anthropic-version is sent)
    GET  /healthz               200, with every circuit breaker's state (liveness)
    GET  /readyz                200 while the store (and Redis) answered their last background probe,
                                else 503 naming the dependency that did not (readiness)
    GET  /metrics               Prometheus text (see tether.server.metrics)
    GET  /version               tether's version and the price data it bills with
    POST /v1/kill               with ``tether serve``: a kill (tether.server.admin.kills.kill_route)
    GET  /v1/approvals          with ``tether gateway serve``: approval requests; POST …/{id}/approve|deny
                                decides one (tether.server.admin.approvals.approval_routes)

The model endpoints take model keys; ``/v1/kill`` and ``/v1/approvals`` take
only admin keys (``tether keys create NAME --admin``), and an admin key gets a
403 here: the key an agent calls models with can never decide its approvals.

One request, in order: the virtual key (``Authorization: Bearer`` or
``x-api-key``; 401; an admin key 403), the body (JSON object, at most ``[gateway]
max_request_bytes``, 32 MiB by default; 400/413), the route (= the body's
``model``; 404), the key's routes (403), the request's fields (400; at most
``max_request_messages`` messages, 10,000 by default; 413), then
``Gateway.dispatch``, which picks the deployment. A body over
``_OFF_LOOP_BYTES`` is parsed and translated in a worker thread, so one huge
request does not hold up the others on the event loop. For each deployment
tried:

- **passthrough** when the deployment speaks the client's format (an OpenAI
  request to an ``openai`` provider, an Anthropic one to ``anthropic``): the
  client's bytes go upstream with only ``model`` replaced, through one shared
  aiohttp session; the answer comes back unchanged; usage is read from it.
  Two exceptions: an Anthropic request with no ``cache_control`` of its own,
  on a route with ``prompt_cache`` (the default), gets the adapter's three
  cache breakpoints (``with_cache_breakpoints``); and a deployment with
  ``faults`` injects them here too (``FaultyModel.inject``): an injected
  failure is raised before anything goes upstream and is handled as the
  upstream's own, and a stream to be cut is cut after ``stream_cut_after``
  events (or just before its end marker) like an upstream that broke.
- **translation** otherwise (either format to ``sim``, OpenAI ⇄ Anthropic):
  the body becomes a ``ModelRequest`` for the deployment's model, and its
  ``ModelResponse`` is rendered back in the client's format.

Streams are relayed event by event as they arrive. Retries and fallbacks
happen only until the upstream has answered 200 (nothing has reached the
client yet); after that the call is settled at the stream's end. A stream that
ends without its end marker, or with an error event, ends for the client with
an error event in its format — never a clean end — and is billed for what it
used. A client that goes away mid-stream has its upstream request cancelled,
and is billed what was used (reported usage, else an estimate from the
characters streamed, marked ``tether.usage_estimated``).

Never: the client's credentials upstream (the provider key comes from the
environment variable ``tether.toml`` names), an upstream URL from the request
(always from config), a stack trace or a secret in a response, a 500 for a
malformed request, per-request state kept after the request (caches and
metric series are bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import time
import traceback
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp
import orjson
from genai_prices import data_snapshot
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from tether import semconv as sc
from tether.config import RouteConfig
from tether.errors import (
    BudgetExceeded,
    BudgetUnavailable,
    ConfigError,
    MalformedResponseError,
    ModelError,
    ModelHTTPError,
    NoDeploymentAvailable,
    RateLimited,
    StoreError,
    StreamInterrupted,
    TetherError,
    UnboundedCall,
    UnknownPriceError,
    UnknownRouteError,
)
from tether.gateway.bound import CallBound, bound_of_wire
from tether.gateway.deps import DependencyUnavailable, backend_of
from tether.gateway.faults import FaultyModel
from tether.gateway.gateway import CallContext, Deployment, Gateway, Placement
from tether.gateway.keys import KeyVerifier, VirtualKey
from tether.gateway.ratelimit import RateLimitBackendUnavailable, RequestTooLarge
from tether.messages import ModelRequest, ModelResponse, ResponseDone, StreamEvent, Usage
from tether.models.anthropic import API_VERSION
from tether.models.base import ProviderConfig
from tether.models.registry import provider_spec
from tether.pricing import PRICE_DATA_VERSION
from tether.redaction import default_scrubber
from tether.server.auth import model_key, presented_key
from tether.server.metrics import UNKNOWN_ROUTE, Metrics
from tether.server.upstream import Upstream, UpstreamTimeouts, kept_headers
from tether.server.wire.anthropic import AnthropicWire, with_cache_breakpoints
from tether.server.wire.base import (
    DEFAULT_MAX_TOKENS,
    Api,
    BadRequest,
    PassthroughTracker,
    SSESplitter,
    StreamRenderer,
    Wire,
    estimate_tokens,
    json_type,
    rewrite_body,
)
from tether.server.wire.openai import OpenAIWire

if TYPE_CHECKING:
    from tether.store import TraceStore

__all__ = ["MAX_BODY_BYTES", "ProxyApp", "create_app"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 32 * 1024 * 1024
"""The default largest request body (``[gateway] max_request_bytes``; Anthropic's own limit)."""

# Bodies larger than this are parsed (and translated) in a worker thread. Translation costs up to
# ~0.3 µs of CPU per byte (tiny content blocks), so 64 KiB is ~20 ms: the most one request may
# hold the event loop. The thread hop (~0.1 ms) is nothing next to such a request's upstream call.
_OFF_LOOP_BYTES: Final = 64 * 1024
# Unexpected exceptions while a request is read are logged once per place they were raised.
_REPORTED: set[tuple[str, str, int]] = set()
_MAX_REPORTED: Final = 256

_MAX_TAGS: Final = 16
_MAX_LABEL_CHARS: Final = 128
_CACHE_ENTRIES: Final = 1024
_CACHE_BYTES: Final = 64 * 1024 * 1024
_DRAIN_S: Final = 1.0
_JSON: Final = b"application/json"
_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tell nginx-style buffering proxies in front of the gateway not to hold events back.
    (b"x-accel-buffering", b"no"),
]
_PROPAGATOR: Final = TraceContextTextMapPropagator()
# Every byte that reaches a client passes through it (``_respond``, ``_pump``): an upstream that echoes a
# provider key, in its answer, an error body or a mid-stream error event, shows ``[secret:provider:NAME]``.
_SCRUBBER: Final = default_scrubber()


class _ClientDisconnected(Exception):
    """The client went away mid-stream (not the deployment's fault: its breaker is not charged)."""


# --- per-request state -----------------------------------------------------------------------


@dataclass(slots=True)
class _Headers:
    """The request headers the proxy reads; nothing else is looked at, nothing is forwarded blindly."""

    authorization: str | None = None
    api_key: str | None = None
    anthropic_version: str | None = None
    anthropic_beta: str | None = None
    agent: str | None = None
    tags: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    cache_control: str | None = None

    @property
    def no_cache(self) -> bool:
        """``Cache-Control: no-cache`` or ``no-store``: never answer from (or keep in) the response cache."""
        value = (self.cache_control or "").lower()
        return "no-cache" in value or "no-store" in value

    @classmethod
    def of(cls, scope: Scope) -> _Headers:
        found = cls()
        for name, value in scope["headers"]:
            if name == b"authorization":
                found.authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                found.api_key = value.decode("latin-1")
            elif name == b"anthropic-version":
                found.anthropic_version = value.decode("latin-1")
            elif name == b"anthropic-beta":
                found.anthropic_beta = value.decode("latin-1")
            elif name == b"x-tether-agent":
                found.agent = value.decode("latin-1").strip() or None
            elif name == b"x-tether-tags":
                found.tags = value.decode("latin-1")
            elif name == b"traceparent":
                found.traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                found.tracestate = value.decode("latin-1")
            elif name == b"cache-control":
                found.cache_control = value.decode("latin-1")
        return found

    def secret(self, api: Api) -> str | None:
        """The virtual key: the client format's own header first, then the other."""
        return presented_key(self.authorization, self.api_key, x_api_key_first=api == "anthropic")


@dataclass(slots=True)
class _Call:
    """One chat request as it moves through the proxy."""

    wire: Wire
    route_label: str = UNKNOWN_ROUTE
    status: int = 500
    response_started: bool = False
    headers: _Headers = field(default_factory=_Headers)
    body: bytes = b""
    data: dict[str, Any] = field(default_factory=dict)
    route: str = ""
    route_config: RouteConfig | None = None
    stream: bool = False
    include_usage: bool = False
    input_estimate: int = 0
    max_output: int | None = None  # the request's own output cap, if it names one
    bound: CallBound | None = None  # worked out only when a budget applies
    tags: tuple[str, ...] = ()
    translated: ModelRequest | None = None
    # The Anthropic body passthrough sends (prompt-cache breakpoints added when due) and its parse,
    # worked out at the first passthrough attempt.
    passthrough: tuple[bytes, dict[str, Any]] | None = None
    # Every failed attempt: says whether "nothing answered" was a bad gateway (502), and whether
    # an HTTP error came from a passthrough upstream (its body is then already in the client's format).
    failures: list[_Failure] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Failure:
    """One failed attempt on one deployment."""

    deployment: str
    error: BaseException
    passthrough: bool


@dataclass(frozen=True, slots=True)
class _Target:
    """Where and how a deployment is called, resolved once from the config."""

    name: str
    kind: str
    model: str
    provider: ProviderConfig
    urls: dict[str, str]
    timeouts: UpstreamTimeouts


@dataclass(frozen=True, slots=True)
class _Complete:
    """A whole answer, already in the client's format."""

    body: bytes
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    usage: Usage
    estimated: bool
    response_id: str | None
    response_model: str | None
    finish_reason: str | None
    simulated: bool


class _Stream(Protocol):
    """An answer being streamed in the client's format."""

    failure: BaseException | None
    simulated: bool
    headers: tuple[tuple[bytes, bytes], ...]

    @property
    def chunks(self) -> AsyncIterator[bytes]: ...

    @property
    def response_id(self) -> str | None: ...

    @property
    def response_model(self) -> str | None: ...

    @property
    def finish_reason(self) -> str | None: ...

    def usage(self, input_estimate: int) -> tuple[Usage, bool]: ...

    async def close(self) -> None: ...


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


class _PassthroughStream:
    """An upstream SSE stream forwarded event by event, read for usage and its end marker on the way."""

    simulated = False

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        tracker: PassthroughTracker,
        wire: Wire,
        deployment: str,
        provider: str,
        *,
        cut_after: int | None = None,
    ) -> None:
        self._response = response
        self.headers = kept_headers(response.headers)
        self._tracker = tracker
        self._wire = wire
        self._deployment = deployment
        self._provider = provider
        # An injected fault (FaultyModel.inject): the events to relay before the stream is cut.
        self._cut_after = cut_after
        self.failure: BaseException | None = None
        self._ended = False
        self._chunks = self._relay()

    @property
    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks

    @property
    def response_id(self) -> str | None:
        return self._tracker.response_id

    @property
    def response_model(self) -> str | None:
        return self._tracker.response_model

    @property
    def finish_reason(self) -> str | None:
        return self._tracker.finish_reason

    def usage(self, input_estimate: int) -> tuple[Usage, bool]:
        return self._tracker.usage(input_estimate)

    @property
    def complete(self) -> bool:
        """What was last yielded holds the end marker and nothing failed or was cut: it ends the answer."""
        return self._ended

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        tracker, content = self._tracker, self._response.content
        cut_after = self._cut_after
        splitter = SSESplitter()
        reason = "the connection closed"
        relayed = 0
        cut = cut_after == 0
        try:
            while not cut and not tracker.done:
                data = await content.readany()
                if not data:
                    break
                # Events that arrived together go to the client together: one write instead of one per event.
                batch: list[bytes] = []
                failed = False
                for block in splitter.feed(data):
                    out = tracker.feed(block)
                    if cut_after is not None and tracker.done:
                        cut = True  # a cut stream never ends in success: it stops before its end marker
                        break
                    if out is not None:
                        batch.append(out)
                        relayed += 1
                    if tracker.failure is not None:
                        failed = True
                        break
                    if cut_after is not None and relayed >= cut_after:
                        cut = True
                        break
                # Only a batch that reached the end marker on its own ends the answer (not a cut, not an error).
                self._ended = tracker.done and not cut and not failed
                if batch:
                    yield b"".join(batch)
                if failed:
                    # The upstream's own error event has gone to the client: that is its end.
                    self.failure = tracker.failure
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = type(exc).__name__  # aiohttp's text may name the upstream's address; this goes to the client
        if cut:
            # As an upstream that broke: close() drops the connection, the usage so far is billed.
            self.failure = StreamInterrupted(
                f"injected fault: the stream from deployment {self._deployment} ({self._provider}) was cut "
                f"after {relayed} events",
                provider=self._provider,
            )
        elif tracker.done:
            return
        else:
            self.failure = StreamInterrupted(
                f"the stream from deployment {self._deployment} ({self._provider}) ended before the answer was "
                f"complete ({reason})",
                provider=self._provider,
            )
        yield self._wire.stream_error(502, str(self.failure))

    async def close(self) -> None:
        await self._chunks.aclose()
        response = self._response
        if not self._tracker.done or self.failure is not None:
            # Dropping the connection is what stops the upstream generating (and billing) an answer
            # nobody will read: the client went away, or the stream already failed.
            response.close()
            return
        if not response.content.at_eof():
            # The end marker arrived; the body's last bytes (the chunked terminator) may not have.
            # Read them so the connection goes back to the pool instead of costing a new handshake.
            # The client has its whole answer already: this only delays the settlement.
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(_DRAIN_S):
                    await response.content.read()
        response.release()


class _ModelStream:
    """A deployment model's stream, rendered in the client's format (translated routes)."""

    def __init__(
        self,
        events: AsyncIterator[StreamEvent],
        first: StreamEvent,
        renderer: StreamRenderer,
        wire: Wire,
        deployment: str,
        provider: str,
        *,
        simulated: bool,
        model: str,
    ) -> None:
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self._events = events
        self._first = first
        self._renderer = renderer
        self._wire = wire
        self._deployment = deployment
        self._provider = provider
        self.simulated = simulated
        self._model = model
        self.failure: BaseException | None = None
        self.response: ModelResponse | None = None
        self._chunks = self._relay()

    @property
    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks

    @property
    def response_id(self) -> str | None:
        return self.response.id if self.response is not None else None

    @property
    def response_model(self) -> str | None:
        return self.response.model if self.response is not None else self._model

    @property
    def finish_reason(self) -> str | None:
        if self.response is None:
            return None
        return self.response.raw_finish_reason or self.response.finish_reason.value

    def usage(self, input_estimate: int) -> tuple[Usage, bool]:
        if self.response is not None:
            return self.response.usage, False
        streamed = estimate_tokens(self._renderer.chars)
        partial = getattr(self.failure, "usage", None)
        if isinstance(partial, Usage):
            output = max(partial.output_tokens, streamed)
            return partial.model_copy(update={"output_tokens": output}), output != partial.output_tokens
        return Usage(input_tokens=input_estimate, output_tokens=streamed), True

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        renderer = self._renderer
        yield renderer.start()
        event = self._first
        try:
            while not isinstance(event, ResponseDone):
                out = renderer.event(event)
                if out:
                    yield out
                event = await anext(self._events)
        except StopAsyncIteration:
            self.failure = StreamInterrupted(
                f"the stream from deployment {self._deployment} ({self._provider}) ended without its final response",
                provider=self._provider,
            )
        except ModelError as exc:
            self.failure = exc
        else:
            self.response = event.response
            yield renderer.finish(event.response)
            return
        yield self._wire.stream_error(502, f"deployment {self._deployment}: {self.failure}")

    async def close(self) -> None:
        await self._chunks.aclose()
        closer = getattr(self._events, "aclose", None)
        if closer is not None:
            await closer()


_PROBE_INTERVAL_S: Final = 1.0


class _Readiness:
    """Background probes of the gateway's dependencies, for ``GET /readyz`` (never one per request).

    Each probe runs every ``_PROBE_INTERVAL_S``; one that fails, or does not answer within the dependency
    timeout, marks its dependency unavailable until a later probe answers. A probe still stuck (a
    database that hangs) is not started again meanwhile, so a hang costs one thread, not one per round.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._checks: dict[str, Callable[[], Awaitable[object]]] = {}
        self._closers: list[Callable[[], Awaitable[object]]] = []
        self._running: dict[str, asyncio.Future[object]] = {}
        self.problems: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    def add_store(self, store: TraceStore) -> None:
        engine = store.engine
        if engine.url.get_backend_name() == "sqlite" and (engine.url.database or ":memory:") == ":memory:":
            return  # one connection shared by every thread, in this process: nothing to probe, nothing to hang

        def ping() -> None:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")

        self._checks[f"the store ({backend_of(store)})"] = lambda: asyncio.to_thread(ping)

    def add_redis(self, url: str) -> None:
        from tether.redis_client import connect

        client, _ = connect(url, timeout_s=self.timeout_s, max_connections=2)
        self._checks["redis"] = client.ping
        self._closers.append(client.aclose)

    def start(self) -> None:
        if self._checks and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(name) for name in self._checks))
            await asyncio.sleep(_PROBE_INTERVAL_S)

    async def _probe(self, name: str) -> None:
        running = self._running.get(name)
        if running is None or running.done():
            running = self._running[name] = asyncio.ensure_future(self._checks[name]())
        try:
            async with asyncio.timeout(self.timeout_s):
                await asyncio.shield(running)
        except TimeoutError:
            self._failed(name, f"did not answer within {self.timeout_s:g} s")
        except Exception as exc:
            self._failed(name, f"unavailable ({type(exc).__name__})")  # the type only: the text has its address
        else:
            if self.problems.pop(name, None) is not None:
                logger.warning("tether gateway: %s answers again", name)

    def _failed(self, name: str, problem: str) -> None:
        if name not in self.problems:
            logger.error("tether gateway: not ready: %s %s", name, problem)
        self.problems[name] = problem

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for running in self._running.values():
            running.cancel()
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()


class _ResponseCache:
    """Whole answers to deterministic requests, for routes with ``response_cache``; bounded in entries and bytes."""

    def __init__(self, *, max_entries: int = _CACHE_ENTRIES, max_bytes: int = _CACHE_BYTES) -> None:
        self._entries: OrderedDict[bytes, tuple[float, bytes, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> tuple[bytes, bytes] | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] < now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1], found[2]

    def put(self, key: bytes, body: bytes, content_type: bytes, expires: float) -> None:
        if len(body) > self._max_bytes // 16:
            return  # one answer may not crowd out the rest
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (expires, body, content_type)
        self._bytes += len(body)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        _, body, _ = self._entries.pop(key)
        self._bytes -= len(body)


# --- ASGI plumbing -----------------------------------------------------------------------------


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            # Refused as soon as the limit is passed: the rest is never read into memory.
            raise BadRequest(
                f"the request body is larger than this gateway accepts ({limit:,} bytes); send a smaller "
                "request, or raise max_request_bytes under [gateway] in tether.toml",
                status=413,
                code="request_too_large",
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(
    call: _Call,
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _JSON,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Send a whole response (once: a failure after it must not try to send another), known secrets scrubbed."""
    call.response_started = True
    call.status = status
    body = _SCRUBBER.scrub_bytes(body)
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _decode(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object with a route name in ``model``; raises ``BadRequest``."""
    if not body.strip():
        raise BadRequest("the request body is empty: send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, got {json_type(data)}")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required: name the tether route to use", param="model")
    return data


def _unreadable(exc: Exception) -> BadRequest:
    """A last resort: an exception no validation foresaw while a request was read, as a 400.

    Logged once per place it was raised, with the exception's type and where, never its
    message or the body (either may carry what the client sent, secrets included).
    """
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ is not None else None
    where = (type(exc).__name__, frame.filename if frame else "?", frame.lineno or 0 if frame else 0)
    if where not in _REPORTED and len(_REPORTED) < _MAX_REPORTED:
        _REPORTED.add(where)
        logger.error(
            "tether gateway: a malformed request raised %s at %s:%d while it was read (answered 400); "
            "a field is not validated, please report it",
            *where,
        )
    return BadRequest(
        f"the gateway could not read this request ({type(exc).__name__} while checking its fields); "
        "check the request's fields and their types against the API reference"
    )


def _usage_of(result: _Complete | _Stream) -> Usage | None:
    """A complete answer is settled at once; a stream when it ends."""
    return result.usage if isinstance(result, _Complete) else None


def _finish_reason(api: Api, data: dict[str, Any]) -> str | None:
    if api == "anthropic":
        return _str_or_none(data.get("stop_reason"))
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return _str_or_none(choices[0].get("finish_reason"))
    return None


def _upstream_message(body: str) -> str:
    """The message inside a provider's JSON error body, else the body itself (shortened)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return body if len(body) <= 500 else body[:500] + "…"


class ProxyApp:
    """The proxy's ASGI app.

    ``POST /v1/chat/completions`` and ``POST /v1/messages`` — the hot path — go
    straight to their handler; everything else (the GET endpoints, 404s and 405s,
    lifespan) goes through Starlette, whose router and exception middleware
    would otherwise cost more per request than the passthrough itself.

    Attributes:
        state: Starlette's application state; ``state.proxy`` is the proxy (metrics, caches) for tests.
    """

    def __init__(self, proxy: _Proxy, app: Starlette) -> None:
        self._proxy = proxy
        self._app = app
        self._chat: dict[str, Wire] = {wire.path: wire for wire in proxy.wires.values()}
        self.state = app.state
        self.state.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            wire = self._chat.get(scope["path"])
            if wire is not None:
                await self._proxy.chat(wire, scope, receive, send)
                return
        await self._app(scope, receive, send)


class _ChatEndpoint:
    """The raw ASGI endpoint of one chat API (an object, so Starlette hands it the raw scope)."""

    def __init__(self, proxy: _Proxy, wire: Wire) -> None:
        self._proxy = proxy
        self._wire = wire

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._proxy.chat(self._wire, scope, receive, send)


# --- the proxy ---------------------------------------------------------------------------------


class _Proxy:
    def __init__(self, gateway: Gateway, keys: KeyVerifier | None, *, require_keys: bool, tracer: Tracer) -> None:
        from importlib.metadata import version

        self._version_body = orjson.dumps({"tether": version("tether"), "price_data": PRICE_DATA_VERSION})
        self.gateway = gateway
        self.keys = keys
        self.require_keys = require_keys
        self.tracer = tracer
        self.upstream = Upstream()
        self.cache = _ResponseCache()
        self.wires: dict[Api, Wire] = {"openai": OpenAIWire(), "anthropic": AnthropicWire()}
        config = gateway.config
        self.targets: dict[str, _Target] = {}
        for name, deployment in config.deployments.items():
            provider = config.providers[deployment.provider]
            spec = provider_spec(provider.kind)
            base = spec.base_url(provider)
            timeout_s = deployment.timeout_s or provider.timeout_s
            settings = ProviderConfig(base_url=base, api_key_env=spec.key_env(provider), name=deployment.provider)
            # Scrubbed from responses, records and logs from the start, whatever its shape (api_key() at each
            # call registers a rotated one).
            settings.register_key()
            self.targets[name] = _Target(
                name=name,
                kind=provider.kind,
                model=deployment.model,
                provider=settings,
                urls={api: wire.upstream_url(base) for api, wire in self.wires.items()},
                timeouts=UpstreamTimeouts.of(timeout_s),
            )
        # Whether a request in each format may need translating on each route (parse it up front if so,
        # so what cannot be translated is a 400 before anything is spent).
        self.translates: dict[tuple[str, Api], bool] = {
            (route_name, api): any(self.targets[d].kind != api for tier in route.tiers for d in tier)
            for route_name, route in config.routes.items()
            for api in self.wires
        }
        self.metrics = Metrics(config.routes, config.deployments)
        self.readiness = _Readiness(gateway.dependency_timeout_s)

    # --- auth ---

    async def _authenticate(self, headers: _Headers, api: Api) -> VirtualKey | tuple[int, str]:
        """The caller's key, or the (status, message) to refuse with (``tether.server.auth``)."""
        assert self.keys is not None
        return await model_key(self.keys, headers.secret(api))

    # --- chat ---

    async def chat(self, wire: Wire, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one chat request end to end; nothing escapes as a bare 500."""
        started = time.perf_counter()
        call = _Call(wire=wire)
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            await self._chat(call, scope, receive, send)
        except _ClientDisconnected:
            call.status = 499  # the client closed the connection before the request was read (nginx's code)
        except Exception as exc:
            status, body, extra = self._error_response(call, exc)
            if not call.response_started:
                await _respond(call, send, status, body, extra=extra)
        finally:
            metrics.in_flight -= 1
            metrics.request(wire.api, call.route_label, call.status, time.perf_counter() - started)

    async def _reject(self, call: _Call, send: Send, status: int, message: str, **kw: str | None) -> None:
        await _respond(call, send, status, call.wire.error_body(status, message, **kw))

    async def _chat(self, call: _Call, scope: Scope, receive: Receive, send: Send) -> None:
        wire = call.wire
        call.headers = headers = _Headers.of(scope)
        key: VirtualKey | None = None
        if self.require_keys:
            verdict = await self._authenticate(headers, wire.api)
            if isinstance(verdict, tuple):
                code = "invalid_api_key" if verdict[0] == 401 else "admin_key"
                return await self._reject(call, send, verdict[0], verdict[1], code=code)
            key = verdict
        limits = self.gateway.config.gateway
        try:
            call.body = body = await _read_body(receive, limits.max_request_bytes)
            off_loop = len(body) > _OFF_LOOP_BYTES
            data = await asyncio.to_thread(_decode, body) if off_loop else _decode(body)
        except BadRequest as exc:
            return await self._reject(call, send, exc.status, exc.message, param=exc.param, code=exc.code)
        except _ClientDisconnected:
            raise
        except Exception as exc:  # a hole in validation: still the client's malformed request, not a 500
            bad = _unreadable(exc)
            return await self._reject(call, send, bad.status, bad.message)
        model: str = data["model"]
        route = self.gateway.config.routes.get(model)
        if route is None:
            known = ", ".join(sorted(self.allowed_routes(key)))
            return await self._reject(
                call,
                send,
                404,
                f"the model {model[:200]!r} is not a route of this gateway (available: {known or 'none'})",
                code="model_not_found",
                param="model",
            )
        call.route_label = call.route = model
        call.route_config = route
        call.data = data
        if key is not None and not key.allows(model):
            return await self._reject(
                call, send, 403, f"the key {key.name!r} may not use route {model!r}", code="route_not_allowed"
            )
        try:
            if off_loop:
                max_tokens = await asyncio.to_thread(self._read_request, call, data)
            else:
                max_tokens = self._read_request(call, data)
        except BadRequest as exc:
            return await self._reject(call, send, exc.status, exc.message, param=exc.param, code=exc.code)
        except Exception as exc:  # a hole in validation: still the client's malformed request, not a 500
            bad = _unreadable(exc)
            return await self._reject(call, send, bad.status, bad.message)
        await self._dispatch(call, route, key, max_tokens, receive, send)

    def _read_request(self, call: _Call, data: dict[str, Any]) -> int:
        """Validate what the gateway reads (and translate, where a deployment needs it); returns the output cap.

        Runs in a worker thread for large bodies: it reads ``call`` and ``data`` and sets
        fields of ``call``, which nothing else touches until it returns.
        """
        wire = call.wire
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest(f"stream must be true or false, got {json_type(stream)}", param="stream")
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", param="messages")
        limit = self.gateway.config.gateway.max_request_messages
        if len(messages) > limit:
            raise BadRequest(
                f"the request has {len(messages):,} messages; this gateway accepts at most {limit:,} per request. "
                "Send fewer (summarise or drop old turns), or raise max_request_messages under [gateway] "
                "in tether.toml",
                param="messages",
                status=413,
                code="request_too_large",
            )
        temperature = data.get("temperature")
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)):
            raise BadRequest("temperature must be a number", param="temperature")
        call.max_output = wire.max_tokens(data)
        max_tokens = call.max_output or DEFAULT_MAX_TOKENS
        call.stream = stream
        options = data.get("stream_options")
        call.include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
        call.input_estimate = estimate_tokens(len(call.body))
        if self.translates[(call.route, wire.api)]:
            call.translated = wire.parse_request(data)
        headers = call.headers
        if headers.agent is not None and len(headers.agent) > _MAX_LABEL_CHARS:
            raise BadRequest(f"x-tether-agent may be at most {_MAX_LABEL_CHARS} characters")
        if headers.tags:
            # Tags feed routing rules and spans: a bounded few, so a client cannot bloat either.
            tags = tuple(t for t in (part.strip() for part in headers.tags.split(",")) if t)
            if len(tags) > _MAX_TAGS or any(len(t) > _MAX_LABEL_CHARS for t in tags):
                raise BadRequest(f"x-tether-tags takes at most {_MAX_TAGS} tags of {_MAX_LABEL_CHARS} characters")
            call.tags = tags
        return max_tokens

    def _start_span(self, call: _Call, key: VirtualKey | None, max_tokens: int) -> Span:
        data, headers = call.data, call.headers
        attributes: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT,
            sc.GEN_AI_REQUEST_MODEL: call.route,
            sc.GEN_AI_REQUEST_MAX_TOKENS: max_tokens,
            sc.TETHER_ROUTE: call.route,
            sc.TETHER_STREAM: call.stream,
            sc.TETHER_PROXY_API: call.wire.api,
        }
        temperature = data.get("temperature")
        if isinstance(temperature, int | float):
            attributes[sc.GEN_AI_REQUEST_TEMPERATURE] = float(temperature)
        if key is not None:
            attributes[sc.TETHER_KEY] = key.name
        if headers.agent is not None:
            attributes[sc.GEN_AI_AGENT_NAME] = headers.agent
        if call.tags:
            attributes[sc.TETHER_TAGS] = call.tags
        parent: otel_context.Context | None = None
        if headers.traceparent is not None:
            # Join the calling agent's trace when it sends W3C trace context.
            carrier = {"traceparent": headers.traceparent, "tracestate": headers.tracestate or ""}
            parent = _PROPAGATOR.extract(carrier)
        return self.tracer.start_span(
            sc.span_name(sc.OP_CHAT, call.route), context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )

    async def _dispatch(
        self, call: _Call, route: RouteConfig, key: VirtualKey | None, max_tokens: int, receive: Receive, send: Send
    ) -> None:
        span = self._start_span(call, key, max_tokens)
        ended = False
        try:
            cache_key = None
            temperature = call.data.get("temperature")
            # Cache-Control: no-cache (an eval's trials must be independent) skips the response cache.
            deterministic = temperature == 0 and not isinstance(temperature, bool)
            if route.response_cache and not call.stream and deterministic and not call.headers.no_cache:
                cache_key = hashlib.blake2b(
                    b"\0".join((call.wire.api.encode(), call.route.encode(), call.body)), digest_size=20
                ).digest()
                hit = self.cache.get(cache_key, time.monotonic())
                self.metrics.response_cache[(call.route, "hit" if hit else "miss")] += 1
                span.set_attribute(sc.TETHER_CACHE_HIT, hit is not None)
                if hit is not None:
                    # Served from tether's cache: no provider call, nothing spent.
                    span.set_attributes({sc.TETHER_COST_USD: 0.0, sc.HTTP_RESPONSE_STATUS_CODE: 200})
                    await _respond(call, send, 200, hit[0], hit[1])
                    return
            ctx = CallContext(
                route=call.route,
                agent=call.headers.agent,
                key=key.name if key is not None else None,
                tags=call.tags,
                key_budget=key.budget if key is not None else None,
                key_rate_limit=key.rate_limit if key is not None else None,
            )

            async def attempt(deployment: Deployment) -> _Complete | _Stream:
                try:
                    result = await self._send(call, deployment)
                except BaseException as exc:
                    passthrough = self.targets[deployment.name].kind == call.wire.api
                    call.failures.append(_Failure(deployment.name, exc, passthrough))
                    self.metrics.upstream_call(deployment.name, False)
                    raise
                self.metrics.upstream_call(deployment.name, True)
                return result

            dispatch = self.gateway.dispatch(
                ctx,
                estimated_tokens=call.input_estimate,
                max_tokens=max_tokens,
                send=attempt,
                usage_of=_usage_of,
                bound=functools.partial(self._bound, call),
            )
            if span.is_recording():
                # Current while the gateway routes, so its decisions (route, tier, deployment,
                # fallbacks) land on this span.
                with otel_trace.use_span(
                    span, end_on_exit=False, record_exception=False, set_status_on_exception=False
                ):
                    result, placement = await dispatch
            else:
                result, placement = await dispatch
            if isinstance(result, _Complete):
                await _respond(call, send, 200, result.body, result.content_type, result.headers)
                span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 200)
                self._record(call, span, result.usage, placement, estimated=result.estimated, answer=result)
                if cache_key is not None:
                    expires = time.monotonic() + route.response_cache_ttl_s
                    self.cache.put(cache_key, result.body, result.content_type, expires)
                return
            ended = True  # the relay ends the span when the stream ends
            await self._relay(call, result, placement, span, receive, send)
        except Exception as exc:
            status, body, extra = self._error_response(call, exc)
            span.set_attributes({sc.ERROR_TYPE: type(exc).__name__, sc.HTTP_RESPONSE_STATUS_CODE: status})
            span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
            if not call.response_started:
                await _respond(call, send, status, body, extra=extra)
        finally:
            if not ended:
                span.end()

    def _bound(self, call: _Call, deployment: Deployment) -> CallBound:
        """The most the call can be billed on ``deployment`` (asked only when a budget applies)."""
        bound = call.bound
        if bound is None:
            bound = call.bound = bound_of_wire(len(call.body), call.data, max_output=call.max_output)
        if self.targets[deployment.name].kind != call.wire.api and call.translated is not None:
            # Translated: tether itself sends the output cap (the default when the client named none).
            return dataclasses.replace(bound, max_output=call.translated.max_tokens, choices=1)
        return bound

    async def _send(self, call: _Call, deployment: Deployment) -> _Complete | _Stream:
        """One attempt on one deployment: passthrough when it speaks the client's format, else translation."""
        target = self.targets[deployment.name]
        wire = call.wire
        if target.kind == wire.api:
            cut_after = None
            if isinstance(deployment.model, FaultyModel):
                # The deployment's faults, as its model would inject them: an injected failure is
                # raised here, before anything goes upstream, and is handled as the upstream's own.
                cut_after = await deployment.model.inject()
            return await self._passthrough(call, target, cut_after=cut_after if call.stream else None)
        request = call.translated
        assert request is not None  # parsed up front whenever the route has such a deployment
        route = call.route_config
        prompt_cache = route.prompt_cache if route is not None else True
        request = request.model_copy(update={"model": target.model, "cache_prompt": prompt_cache})
        model = deployment.model
        if call.stream:
            events = model.stream(request)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise StreamInterrupted(
                    f"the stream from deployment {deployment.name} ended before it began", provider=model.provider
                ) from None
            renderer = wire.stream_renderer(target.model, request, include_usage=call.include_usage)
            return _ModelStream(
                events,
                first,
                renderer,
                wire,
                deployment.name,
                model.provider,
                simulated=model.simulated,
                model=target.model,
            )
        response = await model.complete(request)
        return _Complete(
            body=wire.render(response, request),
            content_type=_JSON,
            headers=(),
            usage=response.usage,
            estimated=False,
            response_id=response.id,
            response_model=response.model,
            finish_reason=response.raw_finish_reason or response.finish_reason.value,
            simulated=response.simulated,
        )

    def _upstream_headers(self, call: _Call, target: _Target) -> tuple[dict[str, str], list[str]]:
        """The upstream request's headers: the provider's key from the environment, never the client's."""
        key = target.provider.api_key()
        headers = {"content-type": "application/json"}
        if call.wire.api == "openai":
            if key:
                headers["authorization"] = f"Bearer {key}"
        else:
            headers["anthropic-version"] = call.headers.anthropic_version or API_VERSION
            if call.headers.anthropic_beta:
                headers["anthropic-beta"] = call.headers.anthropic_beta
            if key:
                headers["x-api-key"] = key
        return headers, [key] if key else []

    async def _passthrough(self, call: _Call, target: _Target, *, cut_after: int | None = None) -> _Complete | _Stream:
        wire = call.wire
        headers, secrets = self._upstream_headers(call, target)
        body, data = call.body, call.data
        if wire.api == "anthropic":
            body, data = self._anthropic_body(call)
        # OpenAI streams report usage only when asked; tether always asks, and hides the
        # usage chunk from a client that did not.
        body = rewrite_body(body, data, target.model, include_usage=call.stream and wire.api == "openai")
        url = target.urls[wire.api]
        if call.stream:
            response = await self.upstream.open(
                url,
                body,
                headers,
                timeouts=target.timeouts,
                deployment=target.name,
                provider=target.kind,
                secrets=secrets,
                stream=True,
            )
            tracker = wire.tracker(include_usage=call.include_usage)
            return _PassthroughStream(response, tracker, wire, target.name, target.kind, cut_after=cut_after)
        reply = await self.upstream.post(
            url,
            body,
            headers,
            timeouts=target.timeouts,
            deployment=target.name,
            provider=target.kind,
            secrets=secrets,
        )
        usage = wire.usage(reply.data)
        estimated = usage is None
        if usage is None:
            # Some OpenAI-compatible servers report no usage: bill an estimate, never nothing.
            usage = Usage(input_tokens=call.input_estimate, output_tokens=estimate_tokens(len(reply.body)))
        return _Complete(
            body=reply.body,
            content_type=reply.content_type.encode("latin-1", "replace"),
            headers=reply.headers,
            usage=usage,
            estimated=estimated,
            response_id=_str_or_none(reply.data.get("id")),
            response_model=_str_or_none(reply.data.get("model")),
            finish_reason=_finish_reason(wire.api, reply.data),
            simulated=False,
        )

    @staticmethod
    def _anthropic_body(call: _Call) -> tuple[bytes, dict[str, Any]]:
        """The Anthropic request to pass through: with the route's prompt-cache breakpoints when due."""
        if call.passthrough is None:
            route = call.route_config
            marked = None
            if route is None or route.prompt_cache:
                marked = with_cache_breakpoints(call.data, call.body)
            # Re-serialised only when breakpoints were added: otherwise the client's bytes go as they are.
            call.passthrough = (orjson.dumps(marked), marked) if marked is not None else (call.body, call.data)
        return call.passthrough

    async def _relay(
        self, call: _Call, stream: _Stream, placement: Placement, span: Span, receive: Receive, send: Send
    ) -> None:
        """Forward a stream while watching for the client leaving; settle and end the span at its end.

        Whatever happens here — the client leaving, the server stopping, a failed send — the
        call is settled and the upstream released exactly once, in the ``finally``.
        """
        pumped = False  # the stream was relayed to its end
        left = False  # the client went away first
        stopped = False  # cancelled from outside: the server is stopping and its grace is over
        watcher: asyncio.Future[None] | None = None
        try:
            call.response_started = True
            call.status = 200
            await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, *stream.headers]})
            # The relay runs in this task; a watcher cancels it if the client leaves (one task, not two).
            relay = asyncio.current_task()
            assert relay is not None

            def client_left(_: asyncio.Future[None]) -> None:
                nonlocal left
                if not pumped and not _.cancelled():
                    left = True
                    relay.cancel()  # stops reading the upstream

            watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
            watcher.add_done_callback(client_left)
            try:
                await self._pump(call, stream, placement, send)
                pumped = True
            except asyncio.CancelledError:
                # Ours: the client left. Otherwise the server is stopping (uvicorn cancels what is still
                # running past its graceful-shutdown bound): the stream is settled below all the same,
                # then ended for the client with an error event instead of a dropped connection.
                stopped = not left
                relay.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()
            try:
                # Not relayed to its end: the client went away (or the server is stopping).
                await self._settle(call, stream, placement, span, gone=not pumped)
            finally:
                span.end()
        if stopped:
            message = "the gateway is shutting down: this answer is incomplete (what was streamed is billed)"
            with contextlib.suppress(Exception):
                await send(
                    {"type": "http.response.body", "body": call.wire.stream_error(503, message), "more_body": True}
                )
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, call: _Call, stream: _Stream, placement: Placement, send: Send) -> None:
        wire = call.wire
        scrub = _SCRUBBER.scrub_bytes
        try:
            # Each chunk is whole SSE events (the passthrough relay splits on event boundaries, the renderer
            # writes whole events), so a secret inside one event is never split across two chunks.
            async for raw in stream.chunks:
                chunk = scrub(raw)
                if isinstance(stream, _PassthroughStream) and stream.complete:
                    # Billed before the end marker leaves: once the client has its whole answer, its cost is
                    # in the journal already (a crash right after the send cannot lose it).
                    await self._bill(call, stream, placement)
                    # The batch with the end marker ends the response too: one write, not two.
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    return
                if isinstance(stream, _ModelStream) and stream.response is not None:
                    await self._bill(call, stream, placement)  # the final chunk: billed first, as above
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:
            logger.exception("tether gateway: a stream failed inside the proxy")
            if stream.failure is None:
                stream.failure = exc
            message = "the gateway failed while streaming this answer; it is incomplete"
            await send({"type": "http.response.body", "body": wire.stream_error(500, message), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _bill(self, call: _Call, stream: _Stream, placement: Placement) -> None:
        """Settle a stream that ended well, before its last bytes go (``_settle`` then finds it settled)."""
        try:
            await placement.finish(stream.usage(call.input_estimate)[0])
        except Exception:  # the answer is whole: a failure to account it must not cut it
            logger.warning("tether gateway: settling a finished stream failed", exc_info=True)

    async def _settle(self, call: _Call, stream: _Stream, placement: Placement, span: Span, *, gone: bool) -> None:
        # A stream that ended well is billed before its connection is drained (up to a second): the client
        # has its whole answer, so its cost must reach the journal now, not after the drain. Others are
        # closed first: that is what stops the upstream generating (and billing) more.
        bill_first = not gone and stream.failure is None
        if not bill_first:
            await self._close(stream)
        usage, estimated = stream.usage(call.input_estimate)
        failure = stream.failure
        # Current while settling, so a settle above the reservation is an event on this span.
        with otel_trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            if gone:
                self.metrics.client_disconnects[call.route_label] += 1
                span.add_event("client_disconnected")
                await placement.abort(_ClientDisconnected("the client went away mid-stream"), usage)
            elif failure is not None:
                self.metrics.stream_interruptions[call.route_label] += 1
                span.set_attribute(sc.ERROR_TYPE, type(failure).__name__)
                span.set_status(Status(StatusCode.ERROR, str(failure)[:500]))
                await placement.abort(failure, usage)
            else:
                await placement.finish(usage)
        if bill_first:
            await self._close(stream)
        span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 200)
        self._record(call, span, usage, placement, estimated=estimated, answer=stream)

    @staticmethod
    async def _close(stream: _Stream) -> None:
        try:
            await stream.close()
        except Exception:  # closing must never stop the call being settled
            logger.warning("tether gateway: closing an upstream stream failed", exc_info=True)

    def _record(
        self,
        call: _Call,
        span: Span,
        usage: Usage,
        placement: Placement,
        *,
        estimated: bool,
        answer: _Complete | _Stream,
    ) -> None:
        cost_usd = placement.cost_usd
        if placement.overrun is not None:
            self.metrics.budget_overruns[call.route_label] += 1
        attributes: dict[str, AttributeValue] = {
            sc.GEN_AI_USAGE_INPUT_TOKENS: usage.input_tokens,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: usage.output_tokens,
            sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: usage.cache_read_tokens,
            sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: usage.cache_write_tokens,
        }
        if answer.response_id is not None:
            attributes[sc.GEN_AI_RESPONSE_ID] = answer.response_id
        if answer.response_model is not None:
            attributes[sc.GEN_AI_RESPONSE_MODEL] = answer.response_model
        if answer.finish_reason is not None:
            attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = (answer.finish_reason,)
        # An unknown price is recorded as unknown, never as $0.
        if cost_usd is None:
            attributes[sc.TETHER_COST_KNOWN] = False
        else:
            attributes[sc.TETHER_COST_USD] = float(cost_usd)
        if estimated:
            attributes[sc.TETHER_USAGE_ESTIMATED] = True
        if answer.simulated:
            attributes[sc.TETHER_SIMULATED] = True
        span.set_attributes(attributes)
        self.metrics.usage(call.route_label, usage, cost_usd, estimated=estimated)

    def _error_response(self, call: _Call, exc: BaseException) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
        """An exception as (status, body in the client's format, extra headers)."""
        wire = call.wire
        failed = next((f for f in reversed(call.failures) if f.error is exc), None)
        if (
            isinstance(exc, ModelHTTPError)
            and failed is not None
            and failed.passthrough
            and exc.status not in (401, 403)
        ):
            # The upstream's own answer, already in the client's format (and redacted).
            return exc.status, exc.body.encode(), ()
        status, message, code = self._classify(call, exc)
        extra: tuple[tuple[bytes, bytes], ...] = ()
        if isinstance(exc, RateLimited):
            seconds = max(exc.retry_after, 0.0)
            extra = ((b"retry-after", str(max(1, math.ceil(seconds))).encode()),)
            extra += ((b"retry-after-ms", str(math.ceil(seconds * 1000)).encode()),)
        return status, wire.error_body(status, message, code=code), extra

    def _classify(self, call: _Call, exc: BaseException) -> tuple[int, str, str | None]:
        if isinstance(exc, BadRequest):
            return exc.status, exc.message, None
        if isinstance(exc, BudgetExceeded):
            return 402, str(exc), "budget_exceeded"
        if isinstance(exc, UnboundedCall):
            return 400, str(exc), "unbounded_request"
        if isinstance(exc, BudgetUnavailable):
            logger.error("tether gateway: %s", exc)
            return 503, str(exc), "budget_unavailable"
        if isinstance(exc, RateLimited):
            return 429, str(exc), "rate_limit_exceeded"
        if isinstance(exc, RequestTooLarge):
            return 413, str(exc), "request_too_large"
        if isinstance(exc, UnknownPriceError):
            return 400, str(exc), "unknown_price"
        if isinstance(exc, UnknownRouteError):
            return 404, str(exc), "model_not_found"
        if isinstance(exc, NoDeploymentAvailable):
            tried = [failure.error for failure in call.failures]
            if tried and all(isinstance(f, MalformedResponseError) for f in tried):
                return 502, f"bad gateway: {exc}", "bad_upstream_response"
            return 503, str(exc), "no_deployment_available"
        if isinstance(exc, DependencyUnavailable):
            return 503, str(exc), "dependency_unavailable"  # names the dependency, never its address
        if isinstance(exc, RateLimitBackendUnavailable | StoreError):
            # Their text names the store's host, port, user and database: for the log only.
            logger.error("tether gateway: %s", exc)
            return (
                503,
                "the gateway cannot check its limits right now: a store it depends on is unavailable",
                ("gateway_unavailable"),
            )
        if isinstance(exc, ModelHTTPError):
            deployment = call.failures[-1].deployment if call.failures else "?"
            detail = _upstream_message(exc.body)
            if exc.status in (401, 403):
                # The gateway's provider credentials were refused: the operator's problem, not the client's key.
                logger.error("tether gateway: deployment %s refused the provider key (HTTP %s)", deployment, exc.status)
                return 502, f"deployment {deployment} refused the gateway's provider credentials: {detail}", None
            return exc.status, f"deployment {deployment} ({exc.provider}) rejected the request: {detail}", None
        if isinstance(exc, ModelError):
            return 502, str(exc), "bad_upstream_response"
        if isinstance(exc, ConfigError):
            logger.error("tether gateway: configuration error: %s", exc)
            return 500, f"the gateway is misconfigured: {exc}", None
        if isinstance(exc, TetherError):
            logger.error("tether gateway: %s: %s", type(exc).__name__, exc)
            return 500, str(exc), None
        logger.error("tether gateway: unexpected error on route %s", call.route or "?", exc_info=exc)
        return 500, "internal error in the tether gateway (details are in its log)", None

    # --- the other endpoints ---

    def allowed_routes(self, key: VirtualKey | None) -> list[str]:
        """The routes ``key`` may use (all of them without auth)."""
        return [r for r in self.gateway.config.routes if key is None or key.allows(r)]

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: the routes as models (the key's own, when auth is on)."""
        anthropic = "anthropic-version" in request.headers
        wire = self.wires["anthropic" if anthropic else "openai"]
        key: VirtualKey | None = None
        if self.require_keys:
            verdict = await self._authenticate(_Headers.of(request.scope), wire.api)
            if isinstance(verdict, tuple):
                code = "invalid_api_key" if verdict[0] == 401 else "admin_key"
                body = wire.error_body(verdict[0], verdict[1], code=code)
                return Response(body, status_code=verdict[0], media_type="application/json")
            key = verdict
        routes = self.allowed_routes(key)
        if anthropic:
            data: dict[str, Any] = {
                "data": [
                    {"type": "model", "id": r, "display_name": r, "created_at": "1970-01-01T00:00:00Z"} for r in routes
                ],
                "has_more": False,
                "first_id": routes[0] if routes else None,
                "last_id": routes[-1] if routes else None,
            }
        else:
            data = {
                "object": "list",
                "data": [{"id": r, "object": "model", "created": 0, "owned_by": "tether"} for r in routes],
            }
        return Response(orjson.dumps(data), media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: 200 while the process serves, with every breaker's state."""
        breakers = self.gateway.breakers.snapshot()
        degraded = any(b.get("state") != "closed" for b in breakers.values())
        body = {"status": "degraded" if degraded else "ok", "breakers": breakers}
        return Response(orjson.dumps(body), media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        """``GET /readyz``: 200 while every dependency answered its last probe, else 503 naming the failing ones."""
        problems = self.readiness.problems
        body = {
            "status": "unavailable" if problems else "ready",
            "dependencies": {name: problems.get(name, "ok") for name in self.readiness.names},
        }
        return Response(orjson.dumps(body), status_code=503 if problems else 200, media_type="application/json")

    async def version(self, request: Request) -> Response:
        """``GET /version``: tether's version and the price data it bills with (no key needed, like /healthz)."""
        return Response(self._version_body, media_type="application/json")

    async def metrics_page(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text exposition."""
        body = self.metrics.render(self.gateway.breakers.snapshot())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(
    gateway: Gateway,
    *,
    keys: KeyVerifier | None,
    require_keys: bool = True,
    tracer: Tracer | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    store: TraceStore | None = None,
) -> ProxyApp:
    """The proxy as an ASGI app; see ``ProxyApp``.

    Args:
        gateway: the gateway every call goes through.
        keys: verifies virtual keys; may be None only with ``require_keys=False``.
        require_keys: False skips authentication (local development, ``--no-auth``).
        tracer: where the ``chat`` spans go; OpenTelemetry's global tracer when None.
        extra_routes: more endpoints on the same port (``tether gateway serve`` adds
            ``POST /v1/kill``); they do their own authentication.
        store: the store the gateway depends on, probed in the background for ``GET /readyz``
            (with ``[gateway] redis_url``, Redis is probed too).

    Raises:
        ConfigError: keys are required but no verifier was given.
    """
    if require_keys and keys is None:
        raise ConfigError("the proxy requires virtual keys but has no key store: pass keys=, or require_keys=False")
    proxy = _Proxy(
        gateway,
        keys,
        require_keys=require_keys,
        tracer=tracer if tracer is not None else otel_trace.get_tracer("tether.server.proxy"),
    )

    if store is not None:
        proxy.readiness.add_store(store)
    if gateway.config.gateway.redis_url:
        proxy.readiness.add_redis(gateway.config.gateway.redis_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # genai-prices loads its price data on first use: ~0.3 s (1 s without bytecode caches)
        # that would otherwise stall the event loop under the first call priced from it.
        await asyncio.to_thread(data_snapshot.get_snapshot)
        proxy.readiness.start()
        try:
            yield
        finally:
            await proxy.readiness.aclose()
            await proxy.upstream.aclose()

    routes: list[BaseRoute] = [
        Route("/v1/chat/completions", _ChatEndpoint(proxy, proxy.wires["openai"]), methods=["POST"]),
        Route("/v1/messages", _ChatEndpoint(proxy, proxy.wires["anthropic"]), methods=["POST"]),
        Route("/v1/models", proxy.models, methods=["GET"]),
        Route("/healthz", proxy.healthz, methods=["GET"]),
        Route("/readyz", proxy.readyz, methods=["GET"]),
        Route("/metrics", proxy.metrics_page, methods=["GET"]),
        Route("/version", proxy.version, methods=["GET"]),
        *extra_routes,
    ]

    async def not_routed(request: Request, exc: Exception) -> Response:
        # Unknown paths and wrong methods in the API's own error format (an SDK parses it), never plain text.
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        path = request.url.path
        wire = proxy.wires["anthropic" if path == "/v1/messages" or path.startswith("/v1/messages/") else "openai"]
        if status == 405:
            allowed = exc.headers.get("Allow", "") if isinstance(exc, HTTPException) and exc.headers else ""
            message = f"{request.method} is not allowed on {path}" + (f": use {allowed}" if allowed else "")
            headers = {"Allow": allowed} if allowed else None
            body = wire.error_body(405, message, code="method_not_allowed")
            return Response(body, status_code=405, headers=headers, media_type="application/json")
        message = (
            f"no such endpoint: {request.method} {path} "
            "(see GET /v1/models, POST /v1/chat/completions, POST /v1/messages)"
        )
        body = wire.error_body(status, message, code="not_found" if status == 404 else None)
        return Response(body, status_code=status, media_type="application/json")

    handlers = {404: not_routed, 405: not_routed}
    return ProxyApp(proxy, Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers))
