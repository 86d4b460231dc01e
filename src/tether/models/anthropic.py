"""Adapter for the Anthropic Messages API (``POST {base_url}/v1/messages``).

Wire format as documented at https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming, cross-checked
against the official ``anthropic`` Python SDK (``types/usage.py``,
``types/stop_reason.py``, ``lib/streaming/_messages.py``).

Prompt caching. With ``request.cache_prompt`` the request carries three
``cache_control: {"type": "ephemeral"}`` breakpoints (the API allows four).
Anthropic renders the prompt as tools → system → messages and caches the
prefix that ends at each breakpoint, so:

1. on the last tool definition: the tool list is the most stable part of an
   agent's prompt; it is reused even when the system prompt changes;
2. on the last system block: tools + system are identical for every run of
   the same agent, so a new run reads them from the cache;
3. on the last content block of the last message: within a run each turn
   resends the whole conversation plus one new turn, so marking the end of
   the conversation writes it to the cache and the next turn reads it back.

Usage. Anthropic reports ``input_tokens`` *excluding* cache reads and writes;
tether's ``Usage.input_tokens`` is the total, so the adapter adds them in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tether.config import ProviderSettings
from tether.errors import MalformedResponseError, ModelHTTPError, StreamInterrupted
from tether.messages import (
    ContentBlock,
    FinishReason,
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseDelta,
    Usage,
)
from tether.models.base import Model, ProviderConfig, redact
from tether.models.http import count, decode_json_object, iter_sse, open_stream, parse_tool_arguments, post_json
from tether.models.registry import ApiKeyHeader, Pricing, ProviderSpec, register
from tether.pricing import PriceRef

__all__ = ["AnthropicModel"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

_EPHEMERAL: dict[str, str] = {"type": "ephemeral"}

_FINISH_REASONS: dict[str, FinishReason] = {
    "end_turn": FinishReason.END_TURN,
    "tool_use": FinishReason.TOOL_USE,
    "max_tokens": FinishReason.MAX_TOKENS,
    "stop_sequence": FinishReason.STOP_SEQUENCE,
    "refusal": FinishReason.CONTENT_FILTER,
}

# The HTTP status each documented error type is sent with outside a stream
# (https://docs.anthropic.com/en/api/errors); an ``error`` event inside a
# stream carries only the type, and the status decides retryability.
_ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _finish_reason(raw: str | None) -> FinishReason:
    return _FINISH_REASONS.get(raw or "", FinishReason.OTHER)


def parse_usage(raw: Mapping[str, Any]) -> Usage:
    cache_read = count(raw.get("cache_read_input_tokens"))
    cache_write = count(raw.get("cache_creation_input_tokens"))
    return Usage(
        input_tokens=count(raw.get("input_tokens")) + cache_read + cache_write,
        output_tokens=count(raw.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _block_to_wire(block: ContentBlock) -> dict[str, Any] | None:
    if isinstance(block, TextBlock):
        # The API rejects empty text blocks; an empty one carries nothing anyway.
        return {"type": "text", "text": block.text} if block.text else None
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    wire: dict[str, Any] = {"type": "tool_result", "tool_use_id": block.tool_use_id, "content": block.content}
    if block.is_error:
        wire["is_error"] = True
    return wire


def _message_to_wire(message: Message) -> dict[str, Any]:
    # The API requires tool_result blocks to come before any text in a user
    # turn (400 otherwise); a stable sort keeps each group's own order.
    blocks = sorted(message.content, key=lambda b: not isinstance(b, ToolResultBlock))
    content = [wire for wire in (_block_to_wire(b) for b in blocks) if wire is not None]
    return {"role": message.role, "content": content}


def error_event(data: Mapping[str, Any], raw: str, secrets: list[str]) -> ModelHTTPError:
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    status = _ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
    return ModelHTTPError(status, redact(raw, secrets), provider="anthropic")


@dataclass
class _TextPart:
    parts: list[str] = field(default_factory=list)


@dataclass
class _ToolPart:
    id: str
    name: str
    ordinal: int
    initial_input: dict[str, Any]
    json_parts: list[str] = field(default_factory=list)


@dataclass
class _StreamState:
    """What a stream has said so far; becomes the response or the interruption."""

    model: str
    id: str = ""
    started: bool = False
    blocks: dict[int, _TextPart | _ToolPart] = field(default_factory=dict)
    tool_calls: int = 0
    raw_usage: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join("".join(b.parts) for b in self.blocks.values() if isinstance(b, _TextPart))

    def interrupted(self, reason: str) -> StreamInterrupted:
        return StreamInterrupted(
            f"anthropic stream ended before message_stop: {reason}",
            provider="anthropic",
            partial_text=self.text,
            usage=parse_usage(self.raw_usage) if self.raw_usage else None,
        )

    def response(self) -> ModelResponse:
        content: list[ContentBlock] = []
        for index in sorted(self.blocks):
            block = self.blocks[index]
            if isinstance(block, _TextPart):
                text = "".join(block.parts)
                if text:
                    content.append(TextBlock(text=text))
                continue
            raw = "".join(block.json_parts)
            if raw:
                arguments, bad = parse_tool_arguments(raw)
            else:
                arguments, bad = block.initial_input, None
            content.append(ToolUseBlock(id=block.id, name=block.name, input=arguments, raw_arguments=bad))
        return ModelResponse(
            id=self.id,
            model=self.model,
            provider="anthropic",
            content=tuple(content),
            finish_reason=_finish_reason(self.stop_reason),
            raw_finish_reason=self.stop_reason,
            usage=parse_usage(self.raw_usage),
        )


class AnthropicModel(Model):
    """A Claude model behind the Anthropic Messages API.

    Args:
        model_name: the model name sent on the wire, e.g. ``claude-sonnet-4-5``.
        config: base URL, key variable, timeout and extra headers; defaults to
            ``https://api.anthropic.com`` with the key in ``ANTHROPIC_API_KEY``.
        http_client: a client to share; when omitted the model creates one and
            closes it in ``aclose()``.
        price_ref: price list entry; defaults to ``PriceRef("anthropic", model_name)``.
    """

    provider = "anthropic"

    def __init__(
        self,
        model_name: str,
        *,
        config: ProviderConfig | None = None,
        http_client: httpx.AsyncClient | None = None,
        price_ref: PriceRef | None = None,
    ) -> None:
        self.model_name = model_name
        self.config = config or ProviderConfig(base_url=DEFAULT_BASE_URL, api_key_env="ANTHROPIC_API_KEY")
        self.price_ref = price_ref or PriceRef("anthropic", model_name)
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=self.config.timeout_s)

    @property
    def url(self) -> str:
        """The Messages endpoint this model posts to."""
        return f"{self.config.base_url.rstrip('/')}/v1/messages"

    def _headers(self, request: ModelRequest | None = None) -> tuple[dict[str, str], list[str]]:
        # Read at call time so the key never lives on this object.
        key = self.config.api_key()
        headers = {"anthropic-version": API_VERSION, "content-type": "application/json", **self.config.extra_headers}
        headers.update(SPEC.auth.headers(key))
        if request is not None and request.metadata.get("cache") == "bypass":
            # An eval's repeats must be independent: a caching proxy (tether's gateway) must not answer from cache.
            headers["cache-control"] = "no-cache"
        return headers, [key] if key else []

    def build_body(self, request: ModelRequest, *, stream: bool = False) -> dict[str, Any]:
        """Translate a tether request into a Messages API request body."""
        body: dict[str, Any] = {
            "model": request.model or self.model_name,
            "max_tokens": request.max_tokens,
            "messages": [_message_to_wire(m) for m in request.messages],
        }
        if request.system:
            # The list-of-blocks form is the one that can carry cache_control.
            body["system"] = [{"type": "text", "text": request.system}]
        if request.tools:
            tools: list[dict[str, Any]] = []
            for spec in request.tools:
                tool: dict[str, Any] = {"name": spec.name, "input_schema": spec.input_schema}
                if spec.description:
                    tool["description"] = spec.description
                tools.append(tool)
            body["tools"] = tools
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop_sequences:
            body["stop_sequences"] = list(request.stop_sequences)
        if stream:
            body["stream"] = True
        if request.cache_prompt:
            # Three breakpoints; the module docstring says why these three.
            if body.get("tools"):
                body["tools"][-1]["cache_control"] = dict(_EPHEMERAL)
            if body.get("system"):
                body["system"][-1]["cache_control"] = dict(_EPHEMERAL)
            messages = body["messages"]
            if messages and messages[-1]["content"]:
                messages[-1]["content"][-1]["cache_control"] = dict(_EPHEMERAL)
        return body

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one request and return the whole answer."""
        headers, secrets = self._headers(request)
        data = await post_json(
            self._client,
            self.url,
            headers=headers,
            body=self.build_body(request),
            timeout_s=self.config.timeout_s,
            provider=self.provider,
            secrets=secrets,
        )
        return self._parse_message(data, request)

    def _parse_message(self, data: Mapping[str, Any], request: ModelRequest) -> ModelResponse:
        message_id = data.get("id")
        raw_content = data.get("content")
        if not isinstance(message_id, str) or not isinstance(raw_content, list):
            raise MalformedResponseError("anthropic response has no id or content list", provider=self.provider)
        content: list[ContentBlock] = []
        for raw in raw_content:
            if not isinstance(raw, dict):
                raise MalformedResponseError("anthropic content block is not an object", provider=self.provider)
            kind = raw.get("type")
            if kind == "text":
                text = raw.get("text")
                if not isinstance(text, str):
                    raise MalformedResponseError("anthropic text block has no text", provider=self.provider)
                content.append(TextBlock(text=text))
            elif kind == "tool_use":
                tool_id, name, arguments = raw.get("id"), raw.get("name"), raw.get("input")
                if not isinstance(tool_id, str) or not isinstance(name, str):
                    raise MalformedResponseError("anthropic tool_use block has no id or name", provider=self.provider)
                if isinstance(arguments, dict):
                    content.append(ToolUseBlock(id=tool_id, name=name, input=arguments))
                else:
                    bad = orjson.dumps(arguments).decode()
                    content.append(ToolUseBlock(id=tool_id, name=name, raw_arguments=bad))
            # thinking, redacted_thinking and server-tool blocks have no place in
            # tether's vocabulary and are dropped.
        usage = data.get("usage")
        stop_reason = data.get("stop_reason")
        raw_stop = stop_reason if isinstance(stop_reason, str) else None
        model = data.get("model")
        return ModelResponse(
            id=message_id,
            model=model if isinstance(model, str) else request.model,
            provider=self.provider,
            content=tuple(content),
            finish_reason=_finish_reason(raw_stop),
            raw_finish_reason=raw_stop,
            usage=parse_usage(usage) if isinstance(usage, dict) else Usage(),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream one answer: text and tool-call deltas, then ``ResponseDone``.

        ``ToolUseDelta.index`` counts tool calls within the answer (0, 1, ...),
        not content blocks, so it means the same as in the OpenAI adapter.

        Raises:
            StreamInterrupted: the stream ended (or the connection broke)
                before ``message_stop``.
            ModelHTTPError: an error status, or an ``error`` event mid-stream.
        """
        headers, secrets = self._headers(request)
        state = _StreamState(model=request.model or self.model_name)
        async with open_stream(
            self._client,
            self.url,
            headers=headers,
            body=self.build_body(request, stream=True),
            timeout_s=self.config.timeout_s,
            provider=self.provider,
            secrets=secrets,
        ) as response:
            try:
                async for sse in iter_sse(response):
                    data = decode_json_object(sse.data, provider=self.provider, what="a stream event", secrets=secrets)
                    kind = data.get("type", sse.event)
                    if kind == "message_stop":
                        if not state.started:
                            raise state.interrupted("message_stop without message_start")
                        yield ResponseDone(response=state.response())
                        return
                    if kind == "error":
                        raise error_event(data, sse.data, secrets)
                    for event in self._apply(state, kind, data):
                        yield event
            except httpx.TransportError as exc:
                # Includes read timeouts: the answer is cut either way, and the
                # interruption carries what had arrived.
                raise state.interrupted(f"{type(exc).__name__}: {redact(str(exc), secrets)}") from exc
        raise state.interrupted("connection closed")

    def _apply(self, state: _StreamState, kind: object, data: Mapping[str, Any]) -> list[StreamEvent]:
        """Fold one stream event into ``state``; return the tether events it produces."""
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, dict):
                raise MalformedResponseError("anthropic message_start has no message", provider=self.provider)
            state.started = True
            message_id = message.get("id")
            state.id = message_id if isinstance(message_id, str) else ""
            if isinstance(message.get("model"), str):
                state.model = message["model"]
            if isinstance(message.get("usage"), dict):
                state.raw_usage.update(message["usage"])
            return []
        if kind == "content_block_start":
            index, block = data.get("index"), data.get("content_block")
            if not isinstance(index, int) or not isinstance(block, dict):
                raise MalformedResponseError("anthropic content_block_start is malformed", provider=self.provider)
            if block.get("type") == "text":
                text = block.get("text") if isinstance(block.get("text"), str) else ""
                state.blocks[index] = _TextPart(parts=[text] if text else [])
                return [TextDelta(text=text)] if text else []
            if block.get("type") == "tool_use":
                tool_id, name = block.get("id"), block.get("name")
                if not isinstance(tool_id, str) or not isinstance(name, str):
                    raise MalformedResponseError("anthropic tool_use block has no id or name", provider=self.provider)
                initial = block.get("input")
                part = _ToolPart(
                    id=tool_id,
                    name=name,
                    ordinal=state.tool_calls,
                    initial_input=initial if isinstance(initial, dict) else {},
                )
                state.blocks[index] = part
                state.tool_calls += 1
                return [ToolUseDelta(index=part.ordinal, id=tool_id, name=name)]
            return []  # thinking and server-tool blocks are not tether content
        if kind == "content_block_delta":
            index, delta = data.get("index"), data.get("delta")
            if not isinstance(delta, dict):
                raise MalformedResponseError("anthropic content_block_delta has no delta", provider=self.provider)
            target = state.blocks.get(index) if isinstance(index, int) else None
            if isinstance(target, _TextPart) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    target.parts.append(text)
                    return [TextDelta(text=text)]
            elif isinstance(target, _ToolPart) and delta.get("type") == "input_json_delta":
                fragment = delta.get("partial_json")
                if isinstance(fragment, str) and fragment:
                    target.json_parts.append(fragment)
                    return [ToolUseDelta(index=target.ordinal, arguments_delta=fragment)]
            return []
        if kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                state.stop_reason = delta["stop_reason"]
            usage = data.get("usage")
            if isinstance(usage, dict):
                # Cumulative counts; fields sent as null keep the message_start value.
                state.raw_usage.update({k: v for k, v in usage.items() if v is not None})
            return []
        # ping, content_block_stop and event types added later carry nothing we need;
        # the streaming docs ask clients to ignore unknown events.
        return []

    async def aclose(self) -> None:
        """Close the HTTP client if this model created it."""
        if self._owns_client and not self._client.is_closed:
            await self._client.aclose()


def _build(spec: ProviderSpec, settings: ProviderSettings, model_name: str, config: ProviderConfig) -> Model:
    return AnthropicModel(model_name, config=config)


SPEC = register(
    ProviderSpec(
        kind="anthropic",
        wire="anthropic",
        auth=ApiKeyHeader("x-api-key"),
        default_base_url=DEFAULT_BASE_URL,
        default_key_env="ANTHROPIC_API_KEY",
        error_format="anthropic",
        pricing=Pricing(provider_id="anthropic"),
        factory=_build,
    )
)
