"""The most a call can be billed: what a budget reserves before the call is made.

A budget holds only if no call can be billed more than it reserved, so the
reservation must be an upper bound, not an estimate (characters / 4 is an
estimate: a tokenizer that counts differently, or an image billed at a
thousand tokens, blew through budgets with it). The bound, per deployment:

* **Text** (messages, system, tool definitions, tool calls and results) counts
  one token per UTF-8 byte. Every tokenizer these providers use is a byte-level
  BPE (OpenAI's ``o200k``/``cl100k``) or a BPE with byte fallback, whose every
  token covers at least one byte, so a text of N bytes is never more than N
  tokens. For a wire request the whole JSON body's length is used, minus the
  base64/URL data of image and file parts: the body's quoting, keys and
  punctuation outnumber the few tokens of framing each message gets.
* **Images** count at the provider's documented maximum per image (see
  ``_ANTHROPIC_IMAGE_TOKENS`` and ``_OPENAI_IMAGE_TOKENS``), or the
  deployment's ``image_tokens``.
* **Parts with no per-part maximum** (PDFs and other files, audio, server-side
  tools such as web search that add their results to the input) make the input
  bounded only by the model's context window.
* **Input** is capped by the context window (``context_window`` on the
  deployment, else genai-prices' figure for the model): a provider refuses,
  and does not bill, a prompt longer than that.
* **Output** is the request's own cap (``max_tokens``), times ``n`` choices;
  without a cap, the deployment's ``max_output_tokens``, else the context window.

When neither the parts nor a context window bound a budgeted call, it is
refused (``UnboundedCall``) with what to configure. Nothing here tokenizes or
parses again: the proxy walks the body it already parsed, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import orjson

from tether.errors import UnboundedCall
from tether.messages import ModelRequest, TextBlock, ToolResultBlock, ToolUseBlock
from tether.pricing import PriceRef

__all__ = ["CallBound", "ModelLimits", "bound_of_request", "bound_of_wire", "context_window_of", "image_tokens_of"]

# Anthropic, "Images and vision": an image whose long edge exceeds 1,568 px or that would
# cost more than ~1,600 tokens (w x h / 750) is scaled down first; the high-resolution models
# (Opus 4.7 and later, Sonnet 5 and later, Haiku 5.5) take up to 2,576 px and at most 4,784
# tokens ceil(w/28) x ceil(h/28) per image. The larger figure bounds both.
# https://platform.claude.com/docs/en/build-with-claude/vision
_ANTHROPIC_IMAGE_TOKENS: Final = 4784
# OpenAI, "Images and vision" (calculating costs): tile models scale to fit 2048 x 2048, then the
# short side to 768 px, so at most 2 x 4 = 8 tiles of 512 px: 85 + 170 x 8 = 1,445 tokens (gpt-4o,
# gpt-4.1, o1, o3); gpt-4o-mini bills 2,833 + 5,667 per tile = 48,169; patch models cap an image at
# 1,536 patches of 32 px times a multiplier (gpt-4.1-mini 1.62, gpt-4.1-nano 2.46, o4-mini 1.72).
# https://platform.openai.com/docs/guides/images-vision#calculating-costs
# Longest prefix first; a model not listed gets the largest documented figure.
_OPENAI_IMAGE_TOKENS: Final = (
    ("gpt-4.1-nano", 3779),
    ("gpt-4.1-mini", 2489),
    ("gpt-4o-mini", 48169),
    ("o4-mini", 2642),
    ("gpt-4.1", 1445),
    ("gpt-4o", 1445),
    ("o1", 1445),
    ("o3", 1445),
)
_OPENAI_IMAGE_TOKENS_MAX: Final = 48169
# Anthropic's tool-use system prompt (313-346 tokens on current models), which is not in the
# request body; a margin on top of it.
_TOOL_PROMPT_TOKENS: Final = 512
# A built-in tool type (computer, bash, text editor…) is a few bytes in the request but its
# definition is expanded to up to ~735 tokens.
_BUILTIN_TOOL_TOKENS: Final = 1024
# The reply's priming and start/end markers.
_REQUEST_FRAMING_TOKENS: Final = 16
# Per message in a ModelRequest (no JSON body whose punctuation covers the framing).
_MESSAGE_FRAMING_TOKENS: Final = 8

_IMAGE_PARTS: Final = frozenset({"image", "image_url", "input_image"})
_UNBOUNDED_PARTS: Final = frozenset({"document", "file", "input_file", "input_audio", "container_upload"})
# Server-side tools whose results join the input during the call.
_SERVER_TOOL_PREFIXES: Final = ("web_search", "web_fetch", "code_execution", "mcp")


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What bounds a call on one deployment.

    Attributes:
        context_window: the most tokens of input (and of output) the model takes; None when unknown.
        max_output_tokens: the model's own output cap when the request names none; None when unknown.
        image_tokens: the most tokens one image part can be billed.
    """

    context_window: int | None
    max_output_tokens: int | None
    image_tokens: int


@dataclass(frozen=True, slots=True)
class CallBound:
    """What a request contains that bounds its billing, counted once per request.

    Attributes:
        text_tokens: tokens of everything but image and file parts (one per UTF-8 byte, plus framing).
        images: image parts, each billed at most ``ModelLimits.image_tokens``.
        unbounded: parts with no per-part maximum (files, audio, server-side tools); the context window bounds them.
        max_output: the request's own output cap; None when it names none.
        choices: how many completions are asked for (OpenAI ``n``).
    """

    text_tokens: int
    images: int = 0
    unbounded: int = 0
    max_output: int | None = None
    choices: int = 1

    def tokens(self, limits: ModelLimits, *, deployment: str, model: str) -> tuple[int, int]:
        """The most input and output tokens the call can be billed on a deployment with ``limits``.

        Raises:
            UnboundedCall: the input or the output has no bound (no context window is known).
        """
        window = limits.context_window
        if self.unbounded and window is None:
            raise UnboundedCall(
                f"a budget applies but deployment {deployment} (model {model!r}) has no known context window, and "
                f"the request has {self.unbounded} part(s) with no per-part token maximum (a file, a PDF, audio or "
                "a server-side tool): set context_window on the deployment in tether.toml, or send text and images"
            )
        input_tokens = self.text_tokens + self.images * limits.image_tokens
        if window is not None:
            input_tokens = window if self.unbounded else min(input_tokens, window)
        output = self.max_output if self.max_output is not None else limits.max_output_tokens
        if output is None:
            output = window
        if output is None:
            raise UnboundedCall(
                f"a budget applies but the request sets no max_tokens and deployment {deployment} (model {model!r}) "
                "has no known output limit: send max_tokens, or set max_output_tokens (or context_window) on the "
                "deployment in tether.toml"
            )
        if window is not None:
            output = min(output, window)
        return input_tokens, output * self.choices


@lru_cache(maxsize=1024)
def context_window_of(ref: PriceRef | None) -> int | None:
    """genai-prices' context window for the model ``ref`` names; None when it has none."""
    if ref is None:
        return None
    from genai_prices.data_snapshot import get_snapshot

    try:
        _, info = get_snapshot().find_provider_model(ref.model_ref, None, ref.provider_id, None)
    except LookupError:
        return None
    window = info.context_window
    return window if isinstance(window, int) and window > 0 else None


def image_tokens_of(wire: str | None, model: str) -> int:
    """The documented most tokens one image costs on ``model`` behind the ``wire`` format (a provider spec's)."""
    if wire == "anthropic":
        return _ANTHROPIC_IMAGE_TOKENS
    if wire == "openai":
        lowered = model.lower()
        for prefix, tokens in _OPENAI_IMAGE_TOKENS:
            if lowered.startswith(prefix):
                return tokens
    # Unknown families (and simulated models) get the largest documented figure.
    return max(_ANTHROPIC_IMAGE_TOKENS, _OPENAI_IMAGE_TOKENS_MAX)


# --- counting ------------------------------------------------------------------------------------


class _Count:
    __slots__ = ("images", "unbounded", "unpriced_bytes")

    def __init__(self) -> None:
        self.images = 0
        self.unbounded = 0
        self.unpriced_bytes = 0  # image and file data: billed per part, not per byte

    def parts(self, content: object, depth: int = 0) -> None:
        if not isinstance(content, list) or depth > 2:
            return
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in _IMAGE_PARTS:
                self.images += 1
                self.unpriced_bytes += _data_bytes(part)
            elif kind in _UNBOUNDED_PARTS:
                if kind == "document" and _is_text_document(part):
                    continue  # plain text: its bytes bound it
                self.unbounded += 1
                self.unpriced_bytes += _data_bytes(part)
            elif kind == "tool_result":
                # A tool result may carry images of its own (Anthropic).
                self.parts(part.get("content"), depth + 1)


def _data_bytes(part: Mapping[str, Any]) -> int:
    """The length of the base64 data or URL strings inside one part (at most two levels deep)."""
    total = 0
    for value in part.values():
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, dict):
            total += sum(len(v) for v in value.values() if isinstance(v, str))
    return total


def _is_text_document(part: Mapping[str, Any]) -> bool:
    source = part.get("source")
    return isinstance(source, dict) and source.get("type") in ("text", "content")


def _tool_overhead(tools: object) -> tuple[int, int]:
    """Tokens the tools add beyond their JSON bytes, and how many are server-side (unbounded)."""
    if not isinstance(tools, list) or not tools:
        return 0, 0
    extra, server = _TOOL_PROMPT_TOKENS, 0
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if not isinstance(kind, str) or kind in ("function", "custom"):
            continue
        if kind.startswith(_SERVER_TOOL_PREFIXES):
            server += 1
        else:
            extra += _BUILTIN_TOOL_TOKENS
    return extra, server


def _choices(data: Mapping[str, Any]) -> int:
    n = data.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def bound_of_wire(body_bytes: int, data: Mapping[str, Any], *, max_output: int | None) -> CallBound:
    """The bound of an OpenAI or Anthropic request body (``data`` is ``body`` parsed; ``body_bytes`` its length).

    Args:
        body_bytes: the raw body's length in bytes.
        data: the parsed body.
        max_output: the request's output cap (``max_tokens``/``max_completion_tokens``); None if it has none.
    """
    count = _Count()
    messages = data.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                count.parts(message.get("content"))
    count.parts(data.get("system"))
    extra, server_tools = _tool_overhead(data.get("tools"))
    # Search results (OpenAI web_search_options, Anthropic MCP servers) join the input: no per-part bound.
    server_tools += sum(1 for key in ("web_search_options", "mcp_servers") if data.get(key))
    text = max(0, body_bytes - count.unpriced_bytes)
    return CallBound(
        text_tokens=text + extra + _REQUEST_FRAMING_TOKENS,
        images=count.images,
        unbounded=count.unbounded + server_tools,
        max_output=max_output,
        choices=_choices(data),
    )


def _utf8(text: str) -> int:
    # ASCII (the common case) without encoding; otherwise the exact byte count.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _tool_bytes(tools: Iterable[Any]) -> int:
    return sum(_utf8(t.name) + _utf8(t.description) + len(orjson.dumps(t.input_schema)) for t in tools)


def bound_of_request(request: ModelRequest) -> CallBound:
    """The bound of an in-process ``ModelRequest`` (text only: it has no image parts)."""
    tokens = _REQUEST_FRAMING_TOKENS + _utf8(request.system or "")
    if request.tools:
        tokens += _TOOL_PROMPT_TOKENS + _tool_bytes(request.tools)
    for message in request.messages:
        tokens += _MESSAGE_FRAMING_TOKENS
        for block in message.content:
            if isinstance(block, TextBlock):
                tokens += _utf8(block.text)
            elif isinstance(block, ToolUseBlock):
                tokens += _utf8(block.name) + (
                    _utf8(block.raw_arguments) if block.raw_arguments else len(orjson.dumps(block.input))
                )
            elif isinstance(block, ToolResultBlock):
                tokens += _utf8(block.content)
    return CallBound(text_tokens=tokens, max_output=request.max_tokens)
