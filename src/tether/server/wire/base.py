"""What the proxy's two wire formats share: request errors, body rewriting, SSE framing, estimates.

The OpenAI and Anthropic formats themselves live in ``_wire_openai`` and
``_wire_anthropic``; both implement the ``Wire`` protocol below, so the proxy's
request handling is written once.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterator
from typing import Any, Final, Literal, Protocol

import orjson

from tether.errors import ModelHTTPError
from tether.messages import ModelRequest, ModelResponse, StreamEvent, Usage

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_TOKENS",
    "MAX_OUTPUT_TOKENS",
    "Api",
    "BadRequest",
    "PassthroughTracker",
    "SSESplitter",
    "StreamRenderer",
    "Wire",
    "estimate_tokens",
    "json_type",
    "output_cap",
    "parse_sse_block",
    "rewrite_body",
    "shown",
    "tool_schema",
]

Api = Literal["openai", "anthropic"]

# The usual rule of thumb for English with BPE tokenisers; only for pre-call
# reservations and for billing a stream the client abandoned before usage arrived.
CHARS_PER_TOKEN: Final = 4
# Reserved (budgets, TPM) when an OpenAI request names no output cap, and sent as
# the cap when such a request is translated to a format that requires one.
DEFAULT_MAX_TOKENS: Final = 4096


# The largest output cap a request may name. No model emits more than a few hundred thousand
# tokens; above this a cap is a mistake, and budget and rate-limit arithmetic stays far from
# the 64-bit limits of Redis and the store.
MAX_OUTPUT_TOKENS: Final = 1_000_000


def estimate_tokens(chars: int) -> int:
    """Tokens in ``chars`` characters at ``CHARS_PER_TOKEN``, rounded up."""
    return -(-chars // CHARS_PER_TOKEN)


class BadRequest(Exception):
    """The client's request is malformed or asks for something the route cannot do (HTTP 400).

    Attributes:
        message: what is wrong and how to fix it.
        param: the offending field, when there is one.
        status: the HTTP status (400 unless the problem is the request's size: 413).
        code: a machine-readable error code for the OpenAI format's ``code`` field, when there is one.
    """

    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


# --- request validation helpers --------------------------------------------------------------

_JSON_TYPES: Final = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}

# Error messages quote what the client sent, never more than a few dozen characters of it
# (a value may be megabytes, and repr() of it all would cost as much as the request).
_REPR: Final = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlist = 3
_REPR.maxdict = 3
_REPR.maxlevel = 2


def json_type(value: object) -> str:
    """The JSON type of a parsed value, as an error message names it ("an object", "null")."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def shown(value: object) -> str:
    """A short, bounded rendering of a client's value for an error message."""
    return _REPR.repr(value)


def output_cap(value: object, field: str) -> int | None:
    """A request's output cap: None when absent, else an integer in 1..``MAX_OUTPUT_TOKENS``.

    Raises:
        BadRequest: the value is not such an integer (booleans are not integers here).
    """
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise BadRequest(
            f"{field} must be a positive integer of at most {MAX_OUTPUT_TOKENS:,}, got {shown(value)}", param=field
        )
    return value


def tool_schema(schema: object, where: str) -> dict[str, Any]:
    """A tool's input schema, checked as far as both APIs require: a JSON Schema for an object.

    Raises:
        BadRequest: not an object, a ``type`` other than ``"object"``, ``properties`` not an
            object, or ``required`` not a list of strings.
    """
    if not isinstance(schema, dict):
        raise BadRequest(f"{where} must be a JSON Schema object, got {json_type(schema)}", param="tools")
    kind = schema.get("type", "object")
    if kind != "object":
        raise BadRequest(f"{where}.type must be 'object' (a tool takes an object), got {shown(kind)}", param="tools")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise BadRequest(f"{where}.properties must be an object, got {json_type(properties)}", param="tools")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise BadRequest(f"{where}.required must be a list of property names", param="tools")
    return schema


# --- body rewriting -------------------------------------------------------------------------

_MODEL_KEY: Final = re.compile(rb'"model"\s*:\s*')
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def rewrite_body(body: bytes, data: dict[str, Any], model: str, *, include_usage: bool = False) -> bytes:
    """``body`` with the top-level ``model`` replaced (and, if asked, stream usage switched on).

    The bytes are kept as they are except for the model's value, so the upstream
    sees exactly what the client wrote (``cache_control`` blocks, key order,
    whitespace). The splice is taken only when it is unambiguous: the literal
    ``"model"`` occurs once and the body has no ``\\u`` escapes (the only way to
    spell a second key that decodes to ``model``, which could make an upstream
    read a different model than the one tether routed and priced). Otherwise
    the parsed body is re-serialised: semantically identical, and duplicate keys
    collapse to the value tether routed on.

    Args:
        body: the client's JSON body.
        data: ``body`` parsed.
        model: the deployment's model name.
        include_usage: set ``stream_options.include_usage`` (OpenAI streams report no usage otherwise).
    """
    options = data.get("stream_options")
    needs_options = include_usage and not (isinstance(options, dict) and options.get("include_usage") is True)
    if body.count(b'"model"') == 1 and b"\\u" not in body and not (needs_options and "stream_options" in data):
        key = _MODEL_KEY.search(body)
        value = _STRING.match(body, key.end()) if key is not None else None
        if value is not None:
            out = body[: value.start()] + orjson.dumps(model) + body[value.end() :]
            if needs_options:
                # A new top-level key right after the opening brace: nothing else moves.
                brace = out.index(b"{") + 1
                out = out[:brace] + b'"stream_options":{"include_usage":true},' + out[brace:]
            return out
    updated = dict(data)
    updated["model"] = model
    if needs_options:
        updated["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return orjson.dumps(updated)


# --- server-sent events ---------------------------------------------------------------------


class SSESplitter:
    """Cuts a byte stream into complete SSE events (each ending with its blank line).

    Line endings are normalised to ``\\n`` (the SSE spec allows ``\\r\\n`` and
    ``\\r``; providers send ``\\n``), so an event never straddles two chunks and
    is forwarded whole.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The events ``chunk`` completes, in order."""
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # Keep a trailing \r: its \n may be the next chunk's first byte.
            tail = b"\r" if buffer.endswith(b"\r") else b""
            buffer = buffer[: len(buffer) - len(tail)].replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            yield buffer[start : end + 2]
            start = end + 2
        self._buffer = buffer[start:]

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (a stream that ends here was cut)."""
        return self._buffer


def parse_sse_block(block: bytes) -> tuple[bytes | None, bytes]:
    """An event's ``event:`` name (None if absent) and its ``data:`` lines joined by newlines."""
    event: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
    return event, b"\n".join(data)


# --- the protocols each format implements ---------------------------------------------------


class PassthroughTracker(Protocol):
    """Reads a passthrough stream's events as they are forwarded: usage, end marker, errors.

    Attributes:
        done: the upstream's end marker arrived (``[DONE]`` / ``message_stop``).
        failure: an error event the upstream sent mid-stream, if any.
        chars: characters of output streamed so far (text and tool arguments).
        response_id: the answer's id, once seen.
        response_model: the model the upstream says answered, once seen.
        finish_reason: the provider's finish reason, once seen.
    """

    done: bool
    failure: ModelHTTPError | None
    chars: int
    response_id: str | None
    response_model: str | None
    finish_reason: str | None

    def feed(self, block: bytes) -> bytes | None:
        """Read one complete event; return the bytes to forward (None to hold it back)."""
        ...

    def usage(self, input_estimate: int) -> tuple[Usage, bool]:
        """What the stream used: reported where reported, else estimated; and whether estimated."""
        ...


class StreamRenderer(Protocol):
    """Renders tether stream events as the client's SSE format (translated routes)."""

    chars: int

    def start(self) -> bytes:
        """The bytes that open the stream."""
        ...

    def event(self, event: StreamEvent) -> bytes:
        """One event's bytes (may be empty)."""
        ...

    def finish(self, response: ModelResponse) -> bytes:
        """The closing bytes of a complete stream, usage included."""
        ...


class Wire(Protocol):
    """One client API format: errors, request fields, translation to and from tether's vocabulary."""

    api: Api
    path: str

    def error_body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
        """An error body in this format for an HTTP status."""
        ...

    def stream_error(self, status: int, message: str) -> bytes:
        """An SSE error event in this format: how a stream that did not end cleanly ends."""
        ...

    def max_tokens(self, data: dict[str, Any]) -> int | None:
        """The request's output cap; raises ``BadRequest`` when malformed (or missing where required)."""
        ...

    def parse_request(self, data: dict[str, Any]) -> ModelRequest:
        """The wire request as a ``ModelRequest`` (model left empty); raises ``BadRequest``."""
        ...

    def render(self, response: ModelResponse, request: ModelRequest) -> bytes:
        """A complete response body in this format."""
        ...

    def stream_renderer(self, model: str, request: ModelRequest, *, include_usage: bool) -> StreamRenderer:
        """A renderer for one translated stream."""
        ...

    def tracker(self, *, include_usage: bool) -> PassthroughTracker:
        """A tracker for one passthrough stream."""
        ...

    def usage(self, data: dict[str, Any]) -> Usage | None:
        """Usage from a complete response body, None when it reports none."""
        ...

    def upstream_url(self, base_url: str) -> str:
        """The upstream endpoint for a provider's base URL."""
        ...
