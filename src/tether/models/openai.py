"""Adapter for OpenAI Chat Completions (``POST {base_url}/chat/completions``).

Wire format as documented at https://platform.openai.com/docs/api-reference/chat
and cross-checked against the official ``openai`` Python SDK
(``types/chat/chat_completion_chunk.py``, ``_streaming.py``). With a
``base_url`` the same adapter serves OpenAI-compatible servers: vLLM, Ollama
(``http://localhost:11434/v1``), llama.cpp's ``llama-server``; for those the
API key is optional (``ProviderConfig(api_key_env=None)`` sends none).

Output cap. OpenAI deprecated ``max_tokens`` in favour of
``max_completion_tokens`` and rejects the former for reasoning models, while
Ollama documents only ``max_tokens``. The adapter therefore sends
``max_completion_tokens`` to api.openai.com and ``max_tokens`` to any other
server; ``max_tokens_param`` overrides the choice.

Usage. ``prompt_tokens`` already includes ``prompt_tokens_details.cached_tokens``,
which is exactly tether's ``Usage.input_tokens``; Chat Completions reports no
cache writes (OpenAI caches automatically, without per-request markers, so
``ModelRequest.cache_prompt`` has nothing to do here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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

__all__ = ["OpenAIModel"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_OPENAI_HOST = "api.openai.com"

MaxTokensParam = Literal["max_completion_tokens", "max_tokens"]

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": FinishReason.END_TURN,
    "tool_calls": FinishReason.TOOL_USE,
    "function_call": FinishReason.TOOL_USE,
    "length": FinishReason.MAX_TOKENS,
    "content_filter": FinishReason.CONTENT_FILTER,
}

# Status for an error object sent inside a 200 stream. OpenAI's codes are
# strings; vLLM puts the HTTP status in ``code``. Unknown errors count as 500
# (retryable), as a server-side failure mid-answer most likely is.
_STREAM_ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "service_unavailable": 503,
}


def _finish_reason(raw: str | None) -> FinishReason:
    return _FINISH_REASONS.get(raw or "", FinishReason.OTHER)


def parse_usage(raw: Mapping[str, Any]) -> Usage:
    details = raw.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(
        input_tokens=count(raw.get("prompt_tokens")),
        output_tokens=count(raw.get("completion_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=0,
    )


def _text_content(texts: list[str]) -> str | list[dict[str, str]]:
    # One block travels as a plain string (accepted everywhere); several as
    # text parts, so block boundaries are not glued together.
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": t} for t in texts]


def _messages_to_wire(system: str | None, messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    if system:
        wire.append({"role": "system", "content": system})
    for message in messages:
        texts = [b.text for b in message.content if isinstance(b, TextBlock) and b.text]
        if message.role == "assistant":
            calls = [
                {
                    "id": b.id,
                    "type": "function",
                    # Malformed arguments go back verbatim so the model sees what it wrote.
                    "function": {
                        "name": b.name,
                        "arguments": b.raw_arguments if b.raw_arguments is not None else orjson.dumps(b.input).decode(),
                    },
                }
                for b in message.content
                if isinstance(b, ToolUseBlock)
            ]
            entry: dict[str, Any] = {"role": "assistant", "content": _text_content(texts) if texts else None}
            if calls:
                entry["tool_calls"] = calls
            elif not texts:
                entry["content"] = ""
            wire.append(entry)
            continue
        # Tool results become "tool" messages, which must directly follow the
        # assistant message that made the calls; any user text comes after.
        # Chat Completions has no is_error flag: the result text must say so.
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                wire.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.content})
        if texts:
            wire.append({"role": "user", "content": _text_content(texts)})
    return wire


def _tool_call_block(raw: object) -> ToolUseBlock | None:
    if not isinstance(raw, dict):
        raise MalformedResponseError("openai tool call is not an object", provider="openai")
    function = raw.get("function")
    if raw.get("type", "function") != "function" or not isinstance(function, dict):
        return None  # custom (free-form) tools are never sent by tether
    call_id, name, arguments = raw.get("id"), function.get("name"), function.get("arguments")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise MalformedResponseError("openai tool call has no id or function name", provider="openai")
    parsed, bad = parse_tool_arguments(arguments if isinstance(arguments, str) else "")
    return ToolUseBlock(id=call_id, name=name, input=parsed, raw_arguments=bad)


def stream_error(error: object, raw: str, secrets: list[str]) -> ModelHTTPError:
    status = 500
    if isinstance(error, dict):
        code, kind = error.get("code"), error.get("type")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            status = code
        elif isinstance(code, str) and code in _STREAM_ERROR_STATUS:
            status = _STREAM_ERROR_STATUS[code]
        elif isinstance(kind, str) and kind in _STREAM_ERROR_STATUS:
            status = _STREAM_ERROR_STATUS[kind]
    return ModelHTTPError(status, redact(raw, secrets), provider="openai")


@dataclass
class _ToolCallPart:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass
class _StreamState:
    """What a stream has said so far; becomes the response or the interruption."""

    model: str
    id: str = ""
    text: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCallPart] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage | None = None

    def interrupted(self, reason: str) -> StreamInterrupted:
        return StreamInterrupted(
            f"openai stream ended before [DONE]: {reason}",
            provider="openai",
            partial_text="".join(self.text),
            usage=self.usage,
        )

    def response(self) -> ModelResponse:
        content: list[ContentBlock] = []
        text = "".join(self.text) or "".join(self.refusal)
        if text:
            content.append(TextBlock(text=text))
        for index in sorted(self.tool_calls):
            part = self.tool_calls[index]
            arguments, bad = parse_tool_arguments("".join(part.arguments))
            content.append(ToolUseBlock(id=part.id, name=part.name, input=arguments, raw_arguments=bad))
        return ModelResponse(
            id=self.id,
            model=self.model,
            provider="openai",
            content=tuple(content),
            finish_reason=FinishReason.CONTENT_FILTER if self.refusal else _finish_reason(self.finish_reason),
            raw_finish_reason=self.finish_reason,
            usage=self.usage or Usage(),
        )


class OpenAIModel(Model):
    """A model behind the OpenAI Chat Completions wire format.

    Args:
        model_name: the model name sent on the wire, e.g. ``gpt-4.1`` or ``llama3.1:8b``.
        config: base URL, key variable, timeout and extra headers; defaults to
            ``https://api.openai.com/v1`` with the key in ``OPENAI_API_KEY``.
            ``api_key_env=None`` sends no ``Authorization`` header.
        http_client: a client to share; when omitted the model creates one and
            closes it in ``aclose()``.
        price_ref: price list entry; defaults to ``PriceRef("openai", model_name)``
            on api.openai.com and to None (not priced) on any other server,
            since a self-hosted model is not billed at OpenAI's prices.
        max_tokens_param: which request field carries ``max_tokens``; see the
            module docstring for the default.
    """

    provider = "openai"

    def __init__(
        self,
        model_name: str,
        *,
        config: ProviderConfig | None = None,
        http_client: httpx.AsyncClient | None = None,
        price_ref: PriceRef | None = None,
        max_tokens_param: MaxTokensParam | None = None,
    ) -> None:
        self.model_name = model_name
        self.config = config or ProviderConfig(base_url=DEFAULT_BASE_URL, api_key_env="OPENAI_API_KEY")
        is_openai = httpx.URL(self.config.base_url).host == _OPENAI_HOST
        self.price_ref = price_ref or (PriceRef("openai", model_name) if is_openai else None)
        self.max_tokens_param: MaxTokensParam = max_tokens_param or (
            "max_completion_tokens" if is_openai else "max_tokens"
        )
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=self.config.timeout_s)

    @property
    def url(self) -> str:
        """The Chat Completions endpoint this model posts to."""
        return f"{self.config.base_url.rstrip('/')}/chat/completions"

    def _headers(self, request: ModelRequest | None = None) -> tuple[dict[str, str], list[str]]:
        # Read at call time so the key never lives on this object.
        key = self.config.api_key()
        headers = {"content-type": "application/json", **self.config.extra_headers}
        headers.update(SPEC.auth.headers(key))
        if request is not None and request.metadata.get("cache") == "bypass":
            # An eval's repeats must be independent: a caching proxy (tether's gateway) must not answer from cache.
            headers["cache-control"] = "no-cache"
        return headers, [key] if key else []

    def build_body(self, request: ModelRequest, *, stream: bool = False) -> dict[str, Any]:
        """Translate a tether request into a Chat Completions request body."""
        body: dict[str, Any] = {
            "model": request.model or self.model_name,
            "messages": _messages_to_wire(request.system, request.messages),
            self.max_tokens_param: request.max_tokens,
        }
        if request.tools:
            tools: list[dict[str, Any]] = []
            for spec in request.tools:
                function: dict[str, Any] = {"name": spec.name, "parameters": spec.input_schema}
                if spec.description:
                    function["description"] = spec.description
                tools.append({"type": "function", "function": function})
            body["tools"] = tools
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop_sequences:
            body["stop"] = list(request.stop_sequences)
        if stream:
            # Without include_usage a stream reports no tokens at all.
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
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
        return self._parse_completion(data, request)

    def _parse_completion(self, data: Mapping[str, Any], request: ModelRequest) -> ModelResponse:
        completion_id, choices = data.get("id"), data.get("choices")
        if not isinstance(completion_id, str) or not isinstance(choices, list) or not choices:
            raise MalformedResponseError("openai response has no id or choices", provider=self.provider)
        choice = choices[0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise MalformedResponseError("openai choice has no message", provider=self.provider)
        content: list[ContentBlock] = []
        text, refusal = message.get("content"), message.get("refusal")
        if isinstance(text, str) and text:
            content.append(TextBlock(text=text))
        elif isinstance(refusal, str) and refusal:
            content.append(TextBlock(text=refusal))
        raw_calls = message.get("tool_calls")
        for raw in raw_calls if isinstance(raw_calls, list) else []:
            block = _tool_call_block(raw)
            if block is not None:
                content.append(block)
        raw_finish = choice.get("finish_reason")
        finish = raw_finish if isinstance(raw_finish, str) else None
        refused = isinstance(refusal, str) and bool(refusal)
        usage, model = data.get("usage"), data.get("model")
        return ModelResponse(
            id=completion_id,
            model=model if isinstance(model, str) else request.model,
            provider=self.provider,
            content=tuple(content),
            finish_reason=FinishReason.CONTENT_FILTER if refused else _finish_reason(finish),
            raw_finish_reason=finish,
            usage=parse_usage(usage) if isinstance(usage, dict) else Usage(),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream one answer: text and tool-call deltas, then ``ResponseDone``.

        ``ToolUseDelta.index`` is the tool call's ``index`` in the answer.

        Raises:
            StreamInterrupted: the stream ended (or the connection broke)
                before ``data: [DONE]``.
            ModelHTTPError: an error status, or an error object mid-stream.
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
                    if sse.data.strip() == "[DONE]":
                        yield ResponseDone(response=state.response())
                        return
                    chunk = decode_json_object(sse.data, provider=self.provider, what="a stream chunk", secrets=secrets)
                    if chunk.get("error") or sse.event == "error":
                        raise stream_error(chunk.get("error"), sse.data, secrets)
                    for event in self._apply(state, chunk):
                        yield event
            except httpx.TransportError as exc:
                # Includes read timeouts: the answer is cut either way, and the
                # interruption carries what had arrived.
                raise state.interrupted(f"{type(exc).__name__}: {redact(str(exc), secrets)}") from exc
        raise state.interrupted("connection closed")

    def _apply(self, state: _StreamState, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        """Fold one chunk into ``state``; return the tether events it produces."""
        if isinstance(chunk.get("id"), str) and not state.id:
            state.id = chunk["id"]
        if isinstance(chunk.get("model"), str):
            state.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            # Only the final chunk (empty choices) carries usage; vLLM's
            # continuous usage stats send running totals, so the last one wins.
            state.usage = parse_usage(chunk["usage"])
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return []
        events: list[StreamEvent] = []
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # tether never asks for n > 1
            if isinstance(choice.get("finish_reason"), str):
                state.finish_reason = choice["finish_reason"]
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            text = delta.get("content")
            if isinstance(text, str) and text:
                state.text.append(text)
                events.append(TextDelta(text=text))
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                state.refusal.append(refusal)
            raw_calls = delta.get("tool_calls")
            for position, raw in enumerate(raw_calls if isinstance(raw_calls, list) else []):
                event = self._apply_tool_call(state, position, raw)
                if event is not None:
                    events.append(event)
        return events

    def _apply_tool_call(self, state: _StreamState, position: int, raw: object) -> ToolUseDelta | None:
        if not isinstance(raw, dict):
            raise MalformedResponseError("openai tool call delta is not an object", provider=self.provider)
        index = raw.get("index")
        if not isinstance(index, int):
            index = position  # a few compatible servers omit it; the list position is the best guess
        function = raw.get("function")
        fragment = function.get("arguments") if isinstance(function, dict) else None
        fragment = fragment if isinstance(fragment, str) else ""
        part = state.tool_calls.get(index)
        if part is None:
            call_id = raw.get("id")
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise MalformedResponseError("openai tool call starts without id or name", provider=self.provider)
            part = state.tool_calls[index] = _ToolCallPart(id=call_id, name=name)
            if fragment:
                part.arguments.append(fragment)
            return ToolUseDelta(index=index, id=call_id, name=name, arguments_delta=fragment)
        if not fragment:
            return None
        part.arguments.append(fragment)
        return ToolUseDelta(index=index, arguments_delta=fragment)

    async def aclose(self) -> None:
        """Close the HTTP client if this model created it."""
        if self._owns_client and not self._client.is_closed:
            await self._client.aclose()


def _build(spec: ProviderSpec, settings: ProviderSettings, model_name: str, config: ProviderConfig) -> Model:
    return OpenAIModel(model_name, config=config)


SPEC = register(
    ProviderSpec(
        kind="openai",
        wire="openai",
        auth=ApiKeyHeader("authorization", prefix="Bearer "),
        default_base_url=DEFAULT_BASE_URL,
        default_key_env="OPENAI_API_KEY",
        error_format="openai",
        pricing=Pricing(provider_id="openai", default_base_url_only=True),
        factory=_build,
        keyless_at_custom_base_url=True,
    )
)
