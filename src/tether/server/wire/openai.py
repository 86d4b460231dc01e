"""The OpenAI Chat Completions wire format, as the proxy speaks it to clients.

Passthrough (an ``openai``-kind deployment) forwards the client's bytes; this
module only reads what the gateway needs from them (output cap, usage, stream
end marker). Translation (an ``anthropic``- or ``sim``-kind deployment) turns
the request into a ``ModelRequest`` and renders the ``ModelResponse`` back:

- ``usage.prompt_tokens`` is the total input, cache reads and writes included
  (as OpenAI reports it); ``prompt_tokens_details.cached_tokens`` is the cache
  reads; cache writes, which Chat Completions has no field for, are added as
  ``cache_creation_input_tokens`` (the name LiteLLM uses) when there are any.
- ``finish_reason``: end_turn and stop_sequence → ``stop``, tool_use →
  ``tool_calls``, max_tokens → ``length``, content_filter → ``content_filter``.
- Streams: one ``chat.completion.chunk`` per text or tool-call delta, a last
  chunk with the finish reason, the usage chunk (empty ``choices``) only when
  the client asked for it (``stream_options.include_usage``), then ``[DONE]``.
  A stream that fails ends with ``data: {"error": {...}}`` and no ``[DONE]``,
  which the OpenAI SDKs raise as an ``APIError``.

What cannot be translated is refused with a 400 that says so, never dropped
silently: non-text content (images, audio, files), ``n`` > 1, a
``response_format`` other than text, and a ``tool_choice`` other than ``auto``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final

import orjson

from tether.errors import ModelHTTPError
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
    ToolSpec,
    ToolUseBlock,
    Usage,
)
from tether.models.http import parse_tool_arguments
from tether.models.openai import parse_usage, stream_error
from tether.server.wire.base import (
    DEFAULT_MAX_TOKENS,
    Api,
    BadRequest,
    estimate_tokens,
    json_type,
    output_cap,
    parse_sse_block,
    shown,
    tool_schema,
)

__all__ = ["OpenAIWire"]

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

_FINISH: Final = {
    FinishReason.END_TURN: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.TOOL_USE: "tool_calls",
    FinishReason.MAX_TOKENS: "length",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.OTHER: "stop",
}

_CANNOT_TRANSLATE: Final = (
    "cannot be translated to the deployment's API format; use a route whose deployments speak the OpenAI format"
)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _texts(content: object, where: str) -> list[str]:
    """The text of a message's ``content``: a string, or a list of text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise BadRequest(
            f"{where} must be a string or a list of content parts, got {json_type(content)}", param="messages"
        )
    texts: list[str] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(part, dict):
            raise BadRequest(f"{at} must be a content part object, got {json_type(part)}", param="messages")
        kind = part.get("type")
        if not isinstance(kind, str):
            raise BadRequest(f"{at}.type must be a string, got {json_type(kind)}", param="messages")
        if kind != "text":
            raise BadRequest(f"{at}: content of type {shown(kind)} {_CANNOT_TRANSLATE}", param="messages")
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{at}.text must be a string, got {json_type(text)}", param="messages")
        texts.append(text)
    return texts


def _tool_calls(raw: object, where: str) -> list[ContentBlock]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest(f"{where} must be a list, got {json_type(raw)}", param="messages")
    blocks: list[ContentBlock] = []
    for i, call in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(call, dict):
            raise BadRequest(f"{at} must be a tool call object, got {json_type(call)}", param="messages")
        kind = call.get("type", "function")
        if kind != "function":
            raise BadRequest(f"{at}.type must be 'function', got {shown(kind)}", param="messages")
        function = call.get("function")
        if not isinstance(function, dict):
            raise BadRequest(f"{at}.function must be an object, got {json_type(function)}", param="messages")
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments", "")
        if not isinstance(call_id, str):
            raise BadRequest(f"{at}.id must be a string, got {json_type(call_id)}", param="messages")
        if not isinstance(name, str):
            raise BadRequest(f"{at}.function.name must be a string, got {json_type(name)}", param="messages")
        if not isinstance(arguments, str):
            raise BadRequest(
                f"{at}.function.arguments must be a string (JSON text), got {json_type(arguments)}", param="messages"
            )
        parsed, bad = parse_tool_arguments(arguments)
        blocks.append(ToolUseBlock(id=call_id, name=name, input=parsed, raw_arguments=bad))
    return blocks


def _tools(raw: object) -> tuple[ToolSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequest(f"tools must be a list, got {json_type(raw)}", param="tools")
    specs: list[ToolSpec] = []
    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"{at} must be a tool object, got {json_type(tool)}", param="tools")
        kind = tool.get("type")
        if kind != "function":
            raise BadRequest(f"{at}: a tool of type {shown(kind)} {_CANNOT_TRANSLATE}", param="tools")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise BadRequest(f"{at}.function must be an object, got {json_type(function)}", param="tools")
        name, description = function.get("name"), function.get("description", "")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{at}.function.name must be a non-empty string, got {shown(name)}", param="tools")
        if not isinstance(description, str):
            raise BadRequest(f"{at}.function.description must be a string, got {json_type(description)}", param="tools")
        schema = tool_schema(parameters, f"{at}.function.parameters")
        specs.append(ToolSpec(name=name, description=description, input_schema=schema))
    return tuple(specs)


def _merge(turns: list[tuple[str, list[ContentBlock]]]) -> tuple[Message, ...]:
    """Consecutive turns of one role as one message (tool results and the next user text form one turn).

    Each run of one role is gathered into one list and becomes one ``Message``:
    linear in the number of blocks (building a message per merge, as this once
    did, copied the run so far each time — 12 s of CPU for 10,000 user messages).
    """
    runs: list[tuple[str, list[ContentBlock]]] = []
    for role, blocks in turns:
        if runs and runs[-1][0] == role:
            runs[-1][1].extend(blocks)
        else:
            runs.append((role, list(blocks)))
    return tuple(Message(role=role, content=tuple(blocks)) for role, blocks in runs)


def _check_translatable(data: dict[str, Any]) -> None:
    n = data.get("n")
    if n not in (None, 1):
        raise BadRequest(f"n={shown(n)} {_CANNOT_TRANSLATE}", param="n")
    response_format = data.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and response_format.get("type") == "text"
    ):
        raise BadRequest(f"response_format {_CANNOT_TRANSLATE}", param="response_format")
    tool_choice = data.get("tool_choice")
    if tool_choice not in (None, "auto"):
        raise BadRequest(f"tool_choice={shown(tool_choice)} {_CANNOT_TRANSLATE}", param="tool_choice")
    if data.get("functions") is not None:
        raise BadRequest(f"functions (the legacy form of tools) {_CANNOT_TRANSLATE}", param="functions")


def _completion_usage(usage: Usage) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }
    if usage.cache_write_tokens:
        wire["cache_creation_input_tokens"] = usage.cache_write_tokens
    return wire


def _wire_tool_call(block: ToolUseBlock) -> dict[str, Any]:
    arguments = block.raw_arguments if block.raw_arguments is not None else orjson.dumps(block.input).decode()
    return {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}


class _Tracker:
    """Reads an OpenAI passthrough stream; see ``PassthroughTracker``."""

    def __init__(self, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.done = False
        self.failure: ModelHTTPError | None = None
        self.chars = 0
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reason: str | None = None
        self._usage: Usage | None = None

    def feed(self, block: bytes) -> bytes | None:
        _, data = parse_sse_block(block)
        if not data:
            return block
        if data.strip() == b"[DONE]":
            self.done = True
            return block
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return block  # not ours to judge; the client's SDK will say what it makes of it
        if not isinstance(chunk, dict):
            return block
        if chunk.get("error"):
            self.failure = stream_error(chunk.get("error"), data.decode("utf-8", "replace"), [])
            return block
        if self.response_id is None and isinstance(chunk.get("id"), str):
            self.response_id = chunk["id"]
            self.response_model = chunk.get("model") if isinstance(chunk.get("model"), str) else None
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = parse_usage(usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return block
        if not choices and isinstance(usage, dict) and not self.include_usage:
            return None  # the usage chunk tether asked for on its own behalf
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for field in ("content", "refusal"):
                text = delta.get(field)
                if isinstance(text, str):
                    self.chars += len(text)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    for field in ("name", "arguments"):
                        if isinstance(function.get(field), str):
                            self.chars += len(function[field])
        return block

    def usage(self, input_estimate: int) -> tuple[Usage, bool]:
        if self._usage is not None:
            return self._usage, False
        return Usage(input_tokens=input_estimate, output_tokens=estimate_tokens(self.chars)), True


class _StreamRenderer:
    """Renders a translated stream as ``chat.completion.chunk`` events; see ``StreamRenderer``."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.chars = 0
        self._emitted = False
        # tether event index → OpenAI tool-call index (0, 1, ... in order of appearance).
        self._tool_index: dict[int, int] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
        )

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, ResponseDone):
            return b""
        if isinstance(event, TextDelta):
            if not event.text:
                return b""
            self._emitted = True
            self.chars += len(event.text)
            return self._chunk({"content": event.text})
        self.chars += len(event.arguments_delta)
        if event.id is not None:
            self._emitted = True
            index = self._tool_index.setdefault(event.index, len(self._tool_index))
            call = {
                "index": index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name or "", "arguments": event.arguments_delta},
            }
            return self._chunk({"tool_calls": [call]})
        known = self._tool_index.get(event.index)
        if known is None or not event.arguments_delta:
            return b""
        return self._chunk({"tool_calls": [{"index": known, "function": {"arguments": event.arguments_delta}}]})

    def finish(self, response: ModelResponse) -> bytes:
        out = b""
        if not self._emitted:
            # A model that streams nothing but its final response: send its content now.
            out += b"".join(self._content_chunks(response))
        out += self._chunk({}, _FINISH[response.finish_reason])
        if self.include_usage:
            out += _sse(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": _completion_usage(response.usage),
                }
            )
        return out + b"data: [DONE]\n\n"

    def _content_chunks(self, response: ModelResponse) -> list[bytes]:
        chunks: list[bytes] = []
        calls = 0
        for block in response.content:
            if isinstance(block, TextBlock) and block.text:
                self.chars += len(block.text)
                chunks.append(self._chunk({"content": block.text}))
            elif isinstance(block, ToolUseBlock):
                call = _wire_tool_call(block)
                self.chars += len(call["function"]["arguments"])
                chunks.append(self._chunk({"tool_calls": [{"index": calls, **call}]}))
                calls += 1
        return chunks


def _error(status: int, message: str, *, code: str | None, param: str | None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"message": message, "type": kind, "param": param, "code": code}


class OpenAIWire:
    """The OpenAI Chat Completions format (``POST /v1/chat/completions``); see the module docstring."""

    api: Api = "openai"
    path = "/v1/chat/completions"

    def error_body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
        return orjson.dumps({"error": _error(status, message, code=code, param=param)})

    def stream_error(self, status: int, message: str) -> bytes:
        return _sse({"error": _error(status, message, code="stream_interrupted", param=None)})

    def max_tokens(self, data: dict[str, Any]) -> int | None:
        capped = output_cap(data.get("max_completion_tokens"), "max_completion_tokens")
        return capped if capped is not None else output_cap(data.get("max_tokens"), "max_tokens")

    def parse_request(self, data: dict[str, Any]) -> ModelRequest:
        _check_translatable(data)
        raw = data.get("messages")
        if not isinstance(raw, list) or not raw:
            raise BadRequest("messages must be a non-empty list", param="messages")
        system: list[str] = []
        turns: list[tuple[str, list[ContentBlock]]] = []
        for i, message in enumerate(raw):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise BadRequest(f"{where} must be an object, got {json_type(message)}", param="messages")
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str):
                raise BadRequest(f"{where}.role must be a string, got {json_type(role)}", param="messages")
            if role in ("system", "developer"):
                system.extend(_texts(content, f"{where}.content"))
            elif role == "user":
                texts = _texts(content, f"{where}.content")
                turns.append(("user", [TextBlock(text=t) for t in texts]))
            elif role == "assistant":
                blocks: list[ContentBlock] = [TextBlock(text=t) for t in _texts(content, f"{where}.content") if t]
                blocks += _tool_calls(message.get("tool_calls"), f"{where}.tool_calls")
                turns.append(("assistant", blocks))
            elif role == "tool":
                call_id = message.get("tool_call_id")
                if not isinstance(call_id, str):
                    raise BadRequest(
                        f"{where}.tool_call_id must be a string (a tool message answers one call), "
                        f"got {json_type(call_id)}",
                        param="messages",
                    )
                result = "".join(_texts(content, f"{where}.content"))
                turns.append(("user", [ToolResultBlock(tool_use_id=call_id, content=result)]))
            else:
                raise BadRequest(
                    f"{where}.role must be one of system, developer, user, assistant, tool; got {shown(role)}",
                    param="messages",
                )
        if not turns:
            raise BadRequest("messages has no user or assistant message", param="messages")
        stop = data.get("stop")
        if isinstance(stop, str):
            stops: tuple[str, ...] = (stop,)
        elif stop is None:
            stops = ()
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stops = tuple(stop)
        else:
            raise BadRequest("stop must be a string or a list of strings", param="stop")
        temperature = data.get("temperature")
        if temperature is not None and (not isinstance(temperature, int | float) or isinstance(temperature, bool)):
            raise BadRequest("temperature must be a number", param="temperature")
        return ModelRequest(
            model="",
            messages=_merge(turns),
            system="\n\n".join(system) or None,
            tools=_tools(data.get("tools")),
            max_tokens=self.max_tokens(data) or DEFAULT_MAX_TOKENS,
            temperature=temperature,
            stop_sequences=stops,
        )

    def render(self, response: ModelResponse, request: ModelRequest) -> bytes:
        text = response.text
        calls = [_wire_tool_call(b) for b in response.content if isinstance(b, ToolUseBlock)]
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        return orjson.dumps(
            {
                "id": response.id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": response.model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": _FINISH[response.finish_reason]}
                ],
                "usage": _completion_usage(response.usage),
            }
        )

    def stream_renderer(self, model: str, request: ModelRequest, *, include_usage: bool) -> _StreamRenderer:
        return _StreamRenderer(model, include_usage=include_usage)

    def tracker(self, *, include_usage: bool) -> _Tracker:
        return _Tracker(include_usage=include_usage)

    def usage(self, data: dict[str, Any]) -> Usage | None:
        usage = data.get("usage")
        return parse_usage(usage) if isinstance(usage, dict) else None

    def upstream_url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/chat/completions"
