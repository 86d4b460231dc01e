"""The Anthropic Messages wire format, as the proxy speaks it to clients.

Passthrough (an ``anthropic``-kind deployment) forwards the client's bytes,
``cache_control`` blocks included; this module only reads what the gateway
needs from them, and, on a route with ``prompt_cache``, adds the adapter's
three cache breakpoints to a request that has none
(``with_cache_breakpoints``). Translation (an ``openai``- or ``sim``-kind deployment) turns
the request into a ``ModelRequest`` and renders the ``ModelResponse`` back:

- usage is split the way Anthropic reports it: ``input_tokens`` is the
  *uncached* input, with ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` beside it (tether's ``Usage.input_tokens`` is
  their sum, so nothing is lost either way).
- ``stop_reason``: end_turn, tool_use, max_tokens, stop_sequence as they are;
  content_filter → ``refusal``.
- Streams: ``message_start``, a ``content_block_start`` / ``_delta`` /
  ``_stop`` run per text or tool-use block, ``message_delta`` with the stop
  reason and the whole usage (the SDKs take a ``message_delta``'s counts as
  cumulative totals), ``message_stop``. A stream that fails ends with
  ``event: error`` and no ``message_stop``, which the Anthropic SDKs raise.

What cannot be translated is refused with a 400 that says so: images and
documents, server tools, and a ``tool_choice`` other than ``auto``. Thinking
blocks in the conversation are dropped (they have no meaning to another
provider); tool arguments a model wrote as something other than a JSON object
become ``{}`` (the Messages format has no place for raw argument text).
"""

from __future__ import annotations

import secrets
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
from tether.models.anthropic import error_event, parse_usage
from tether.server.wire.base import (
    Api,
    BadRequest,
    estimate_tokens,
    json_type,
    output_cap,
    parse_sse_block,
    shown,
    tool_schema,
)

__all__ = ["AnthropicWire", "with_cache_breakpoints"]

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_STOP: Final = {
    FinishReason.END_TURN: "end_turn",
    FinishReason.TOOL_USE: "tool_use",
    FinishReason.MAX_TOKENS: "max_tokens",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.OTHER: "end_turn",
}

_CANNOT_TRANSLATE: Final = (
    "cannot be translated to the deployment's API format; use a route whose deployments speak the Anthropic format"
)
_SKIPPED_BLOCKS: Final = frozenset({"thinking", "redacted_thinking"})

# The message content blocks that take ``cache_control`` (the Messages API's block params that have
# the field). Not thinking and redacted_thinking; a type not listed here is left alone, since a
# breakpoint the API refuses would fail the client's request.
_CACHEABLE_BLOCKS: Final = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "tool_use",
        "tool_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
    }
)
_CACHE_CONTROL: Final = "cache_control"


def _has_cache_control(value: object) -> bool:
    """Whether a ``cache_control`` key appears anywhere in ``value`` (iterative: bodies nest deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _CACHE_CONTROL in item:
                return True
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return False


def _cacheable(block: object, kinds: frozenset[str]) -> bool:
    # A type that is not a string (an object, a list) cannot be looked up in a set: it is not cacheable.
    if not isinstance(block, dict) or not isinstance(block.get("type"), str) or block["type"] not in kinds:
        return False
    # The API refuses a breakpoint on an empty text block.
    return block.get("type") != "text" or (isinstance(block.get("text"), str) and bool(block["text"]))


def _marked(block: dict[str, Any]) -> dict[str, Any]:
    return {**block, _CACHE_CONTROL: {"type": "ephemeral"}}


def with_cache_breakpoints(data: dict[str, Any], raw: bytes | None = None) -> dict[str, Any] | None:
    """A Messages request with the adapter's cache breakpoints added, or None to send it as it is.

    The breakpoints are ``tether.models.anthropic``'s three (its docstring says
    why): on the last tool, on the last system block and on the last content
    block of the last message — each ``{"type": "ephemeral"}``, at most three
    of the API's four. A string ``system`` or message ``content`` becomes one
    text block, as the adapter sends it. A target that is absent, empty, or
    whose last block cannot carry ``cache_control`` (thinking blocks, empty
    text, an unknown type) gets none.

    None — the client's request goes upstream byte for byte — when nothing
    could be marked, or when the request has a ``cache_control`` anywhere
    (top level included): the client placed its own breakpoints, and they are
    always kept exactly as sent.

    ``data`` is never modified: what changes is copied (it may be sent to
    another deployment as it is). ``raw``, the body ``data`` was parsed from,
    only lets a body that cannot contain the key skip the search for it.
    """
    may_have_key = raw is None or _CACHE_CONTROL.encode() in raw or b"\\u" in raw
    if may_have_key and _has_cache_control(data):
        return None
    out = dict(data)
    added = 0
    tools = data.get("tools")
    if isinstance(tools, list) and tools:
        last = tools[-1]
        # Every tool type takes cache_control; a deferred tool is not part of the cached prefix.
        if isinstance(last, dict) and last.get("defer_loading") is not True:
            out["tools"] = [*tools[:-1], _marked(last)]
            added += 1
    system = data.get("system")
    if isinstance(system, str) and system:
        out["system"] = [_marked({"type": "text", "text": system})]
        added += 1
    elif isinstance(system, list) and system and _cacheable(system[-1], frozenset({"text"})):
        out["system"] = [*system[:-1], _marked(system[-1])]
        added += 1
    messages = data.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        message = messages[-1]
        content = message.get("content")
        blocks: list[Any] | None = None
        if isinstance(content, str) and content:
            blocks = [_marked({"type": "text", "text": content})]
        elif isinstance(content, list) and content and _cacheable(content[-1], _CACHEABLE_BLOCKS):
            blocks = [*content[:-1], _marked(content[-1])]
        if blocks is not None:
            out["messages"] = [*messages[:-1], {**message, "content": blocks}]
            added += 1
    return out if added else None


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _event(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _wire_usage(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.uncached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    }


def _stop_sequence(response: ModelResponse, request: ModelRequest) -> str | None:
    # tether does not keep which sequence matched; with exactly one configured it can only be that one.
    if response.finish_reason is FinishReason.STOP_SEQUENCE and len(request.stop_sequences) == 1:
        return request.stop_sequences[0]
    return None


def _text_of(content: object, where: str) -> str:
    """A tool result's or system prompt's text: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    param = "system" if where == "system" else "messages"
    if not isinstance(content, list):
        raise BadRequest(f"{where} must be a string or a list of text blocks, got {json_type(content)}", param=param)
    texts: list[str] = []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(block, dict):
            raise BadRequest(f"{at} must be a content block object, got {json_type(block)}", param=param)
        kind = block.get("type")
        if not isinstance(kind, str):
            raise BadRequest(f"{at}.type must be a string, got {json_type(kind)}", param=param)
        if kind != "text":
            raise BadRequest(f"{at}: content of type {shown(kind)} {_CANNOT_TRANSLATE}", param=param)
        text = block.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{at}.text must be a string, got {json_type(text)}", param=param)
        texts.append(text)
    return "\n".join(texts)


def _blocks(content: object, role: str, where: str) -> list[ContentBlock]:
    if isinstance(content, str):
        return [TextBlock(text=content)]
    if not isinstance(content, list):
        raise BadRequest(
            f"{where} must be a string or a list of content blocks, got {json_type(content)}", param="messages"
        )
    blocks: list[ContentBlock] = []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(block, dict):
            raise BadRequest(f"{at} must be a content block object, got {json_type(block)}", param="messages")
        kind = block.get("type")
        if not isinstance(kind, str):
            raise BadRequest(f"{at}.type must be a string, got {json_type(kind)}", param="messages")
        if kind in _SKIPPED_BLOCKS:
            continue
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"{at}.text must be a string, got {json_type(text)}", param="messages")
            blocks.append(TextBlock(text=text))
        elif kind == "tool_use" and role == "assistant":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str):
                raise BadRequest(f"{at}.id must be a string, got {json_type(call_id)}", param="messages")
            if not isinstance(name, str):
                raise BadRequest(f"{at}.name must be a string, got {json_type(name)}", param="messages")
            if not isinstance(arguments, dict):
                raise BadRequest(f"{at}.input must be an object, got {json_type(arguments)}", param="messages")
            blocks.append(ToolUseBlock(id=call_id, name=name, input=arguments))
        elif kind == "tool_result" and role == "user":
            call_id, is_error = block.get("tool_use_id"), block.get("is_error", False)
            if not isinstance(call_id, str):
                raise BadRequest(f"{at}.tool_use_id must be a string, got {json_type(call_id)}", param="messages")
            if not isinstance(is_error, bool):
                raise BadRequest(f"{at}.is_error must be true or false, got {json_type(is_error)}", param="messages")
            text = _text_of(block.get("content"), f"{at}.content")
            blocks.append(ToolResultBlock(tool_use_id=call_id, content=text, is_error=is_error))
        else:
            raise BadRequest(f"{at}: a {shown(kind)} block in a {role} message {_CANNOT_TRANSLATE}", param="messages")
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
        kind = tool.get("type", "custom")
        if kind != "custom":
            raise BadRequest(f"{at}: a tool of type {shown(kind)} {_CANNOT_TRANSLATE}", param="tools")
        name, description = tool.get("name"), tool.get("description", "")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{at}.name must be a non-empty string, got {shown(name)}", param="tools")
        if not isinstance(description, str):
            raise BadRequest(f"{at}.description must be a string, got {json_type(description)}", param="tools")
        if "input_schema" not in tool:
            raise BadRequest(f"{at}.input_schema is required (a JSON Schema object)", param="tools")
        schema = tool_schema(tool["input_schema"], f"{at}.input_schema")
        specs.append(ToolSpec(name=name, description=description, input_schema=schema))
    return tuple(specs)


class _Tracker:
    """Reads an Anthropic passthrough stream; see ``PassthroughTracker``."""

    def __init__(self) -> None:
        self.done = False
        self.failure: ModelHTTPError | None = None
        self.chars = 0
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reason: str | None = None
        self._raw_usage: dict[str, Any] = {}
        self._final = False

    def feed(self, block: bytes) -> bytes | None:
        event, data = parse_sse_block(block)
        if not data:
            return block
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return block
        if not isinstance(payload, dict):
            return block
        kind = payload.get("type", event.decode() if event else None)
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                for field in ("text", "partial_json", "thinking"):
                    value = delta.get(field)
                    if isinstance(value, str):
                        self.chars += len(value)
        elif kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self.response_id = message.get("id") if isinstance(message.get("id"), str) else None
                self.response_model = message.get("model") if isinstance(message.get("model"), str) else None
                if isinstance(message.get("usage"), dict):
                    self._raw_usage.update(message["usage"])
        elif kind == "message_delta":
            delta, usage = payload.get("delta"), payload.get("usage")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.finish_reason = delta["stop_reason"]
            if isinstance(usage, dict):
                # Cumulative counts; a null keeps the message_start value.
                self._raw_usage.update({k: v for k, v in usage.items() if v is not None})
                self._final = True
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.failure = error_event(payload, data.decode("utf-8", "replace"), [])
        return block

    def usage(self, input_estimate: int) -> tuple[Usage, bool]:
        if not self._raw_usage:
            return Usage(input_tokens=input_estimate, output_tokens=estimate_tokens(self.chars)), True
        reported = parse_usage(self._raw_usage)
        if self._final:
            return reported, False
        # message_start reported the input; the output so far is only known from what streamed.
        output = max(reported.output_tokens, estimate_tokens(self.chars))
        return reported.model_copy(update={"output_tokens": output}), True


class _StreamRenderer:
    """Renders a translated stream as Messages events; see ``StreamRenderer``."""

    def __init__(self, model: str, request: ModelRequest) -> None:
        self.model = model
        self.request = request
        self.id = "msg_" + secrets.token_hex(12)
        self.chars = 0
        self._next = 0
        self._open: int | None = None
        self._open_kind = ""
        # tether event index → content block index of the tool call.
        self._tools: dict[int, int] = {}

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Counts arrive with the answer's end (in message_delta) when translating.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        return _event(b"content_block_stop", {"type": "content_block_stop", "index": index})

    def _begin(self, kind: str, block: dict[str, Any]) -> tuple[int, bytes]:
        out = self._close()
        index, self._next = self._next, self._next + 1
        self._open, self._open_kind = index, kind
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return index, out + _event(b"content_block_start", start)

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> bytes:
        return _event(b"content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, ResponseDone):
            return b""
        if isinstance(event, TextDelta):
            if not event.text:
                return b""
            self.chars += len(event.text)
            out = b""
            if self._open is None or self._open_kind != "text":
                _, out = self._begin("text", {"type": "text", "text": ""})
            assert self._open is not None
            return out + self._delta(self._open, {"type": "text_delta", "text": event.text})
        self.chars += len(event.arguments_delta)
        if event.id is not None:
            block = {"type": "tool_use", "id": event.id, "name": event.name or "", "input": {}}
            index, out = self._begin("tool_use", block)
            self._tools[event.index] = index
        else:
            found = self._tools.get(event.index)
            if found is None:
                return b""
            index, out = found, b""
        if event.arguments_delta:
            out += self._delta(index, {"type": "input_json_delta", "partial_json": event.arguments_delta})
        return out

    def finish(self, response: ModelResponse) -> bytes:
        out = b""
        if self._next == 0:
            # A model that streams nothing but its final response: send its content now.
            for block in response.content:
                if isinstance(block, TextBlock) and block.text:
                    out += self.event(TextDelta(text=block.text))
                elif isinstance(block, ToolUseBlock):
                    _, start = self._begin(
                        "tool_use", {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
                    )
                    arguments = orjson.dumps(block.input).decode()
                    self.chars += len(arguments)
                    assert self._open is not None
                    out += start + self._delta(self._open, {"type": "input_json_delta", "partial_json": arguments})
        out += self._close()
        delta = {"stop_reason": _STOP[response.finish_reason], "stop_sequence": _stop_sequence(response, self.request)}
        out += _event(b"message_delta", {"type": "message_delta", "delta": delta, "usage": _wire_usage(response.usage)})
        return out + _event(b"message_stop", {"type": "message_stop"})


class AnthropicWire:
    """The Anthropic Messages format (``POST /v1/messages``); see the module docstring."""

    api: Api = "anthropic"
    path = "/v1/messages"

    def error_body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
        return orjson.dumps({"type": "error", "error": {"type": _error_type(status), "message": message}})

    def stream_error(self, status: int, message: str) -> bytes:
        return _event(b"error", {"type": "error", "error": {"type": _error_type(status), "message": message}})

    def max_tokens(self, data: dict[str, Any]) -> int | None:
        value = output_cap(data.get("max_tokens"), "max_tokens")
        if value is None:
            raise BadRequest("max_tokens is required: the most tokens the answer may have", param="max_tokens")
        return value

    def parse_request(self, data: dict[str, Any]) -> ModelRequest:
        tool_choice = data.get("tool_choice")
        if tool_choice is not None and not (isinstance(tool_choice, dict) and tool_choice.get("type") == "auto"):
            raise BadRequest(f"tool_choice={shown(tool_choice)} {_CANNOT_TRANSLATE}", param="tool_choice")
        raw = data.get("messages")
        if not isinstance(raw, list) or not raw:
            raise BadRequest("messages must be a non-empty list", param="messages")
        messages: list[Message] = []
        for i, message in enumerate(raw):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise BadRequest(f"{where} must be an object, got {json_type(message)}", param="messages")
            role = message.get("role")
            if role not in ("user", "assistant"):
                raise BadRequest(f"{where}.role must be 'user' or 'assistant', got {shown(role)}", param="messages")
            content = _blocks(message.get("content"), role, f"{where}.content")
            messages.append(Message(role=role, content=tuple(content)))
        stops = data.get("stop_sequences", [])
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences must be a list of strings", param="stop_sequences")
        temperature = data.get("temperature")
        if temperature is not None and (not isinstance(temperature, int | float) or isinstance(temperature, bool)):
            raise BadRequest("temperature must be a number", param="temperature")
        max_tokens = self.max_tokens(data)
        assert max_tokens is not None
        return ModelRequest(
            model="",
            messages=tuple(messages),
            system=_text_of(data.get("system"), "system") or None,
            tools=_tools(data.get("tools")),
            max_tokens=max_tokens,
            temperature=temperature,
            stop_sequences=tuple(stops),
        )

    def render(self, response: ModelResponse, request: ModelRequest) -> bytes:
        content: list[dict[str, Any]] = []
        for block in response.content:
            if isinstance(block, TextBlock):
                content.append({"type": "text", "text": block.text})
            elif isinstance(block, ToolUseBlock):
                content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
        return orjson.dumps(
            {
                "id": response.id,
                "type": "message",
                "role": "assistant",
                "model": response.model,
                "content": content,
                "stop_reason": _STOP[response.finish_reason],
                "stop_sequence": _stop_sequence(response, request),
                "usage": _wire_usage(response.usage),
            }
        )

    def stream_renderer(self, model: str, request: ModelRequest, *, include_usage: bool) -> _StreamRenderer:
        return _StreamRenderer(model, request)

    def tracker(self, *, include_usage: bool) -> _Tracker:
        return _Tracker()

    def usage(self, data: dict[str, Any]) -> Usage | None:
        usage = data.get("usage")
        return parse_usage(usage) if isinstance(usage, dict) else None

    def upstream_url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/v1/messages"
