"""The shared vocabulary: messages, content blocks, tool calls, usage, stop reasons.

Every provider adapter translates its wire format to and from these types, and
the agent loop, the tracer, the gateway and the evals speak only these.

Token semantics: ``Usage.input_tokens`` counts *all* input tokens, including
those read from and written to a prompt cache (as OpenTelemetry's
``gen_ai.usage.input_tokens`` and OpenAI's ``prompt_tokens`` do). Anthropic
reports cache tokens apart from ``input_tokens``; its adapter adds them in.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ContentBlock",
    "FinishReason",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "StopReason",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ToolCall",
    "ToolResult",
    "ToolResultBlock",
    "ToolSpec",
    "ToolUseBlock",
    "ToolUseDelta",
    "Usage",
    "ResponseDone",
]


class StopReason(StrEnum):
    """Why an agent run ended (or, for ``parked``, paused). Every run ends with exactly one."""

    COMPLETED = "completed"
    MAX_TURNS = "max_turns"
    MAX_TOOL_CALLS = "max_tool_calls"
    TIMEOUT = "timeout"
    BUDGET_EXCEEDED = "budget_exceeded"
    KILLED = "killed"
    DENIED = "denied"
    LOOP_DETECTED = "loop_detected"
    DONE_CONDITION = "done_condition"
    ERROR = "error"
    #: Not an end: the run waits for a person's decision on an approval, with no process holding it.
    #: ``resume`` continues it once the approval is decided.
    PARKED = "parked"


class FinishReason(StrEnum):
    """Why one model response ended, normalised across providers.

    Anthropic ``end_turn``/``tool_use``/``max_tokens``/``stop_sequence`` and
    OpenAI ``stop``/``tool_calls``/``length``/``content_filter`` map here; the
    provider's own word is kept in ``ModelResponse.raw_finish_reason``.
    """

    END_TURN = "end_turn"
    TOOL_USE = "tool_use"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    CONTENT_FILTER = "content_filter"
    OTHER = "other"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextBlock(_Frozen):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(_Frozen):
    """A tool call the model asked for.

    ``raw_arguments`` is set only when the model produced arguments that are not
    a JSON object; ``input`` is then empty and the loop answers with an error.
    """

    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    raw_arguments: str | None = None


class ToolResultBlock(_Frozen):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str
    is_error: bool = False


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class Message(_Frozen):
    """One conversation turn. System instructions travel in ``ModelRequest.system``."""

    role: Literal["user", "assistant"]
    content: tuple[ContentBlock, ...]

    @classmethod
    def user(cls, text: str) -> Message:
        return cls(role="user", content=(TextBlock(text=text),))

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls(role="assistant", content=(TextBlock(text=text),))

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall.from_block(b) for b in self.content if isinstance(b, ToolUseBlock)]


class ToolCall(_Frozen):
    """A tool call as the loop handles it."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw_arguments: str | None = None

    @classmethod
    def from_block(cls, block: ToolUseBlock) -> ToolCall:
        return cls(id=block.id, name=block.name, arguments=block.input, raw_arguments=block.raw_arguments)


class ToolResult(_Frozen):
    """What a tool call produced (or the structured error the model is told)."""

    call_id: str
    name: str
    output: str
    is_error: bool = False

    def to_block(self) -> ToolResultBlock:
        return ToolResultBlock(tool_use_id=self.call_id, content=self.output, is_error=self.is_error)


class Usage(_Frozen):
    """Tokens as the provider reported them.

    ``input_tokens`` includes ``cache_read_tokens`` and ``cache_write_tokens``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cache_read_tokens - self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )


class ToolSpec(_Frozen):
    """A tool as the model sees it: name, description, JSON schema of its input."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ModelRequest(_Frozen):
    """One model call, provider-neutral.

    ``model`` is the provider's model name (``claude-sonnet-4-5``), not a
    ``provider:model`` reference. ``cache_prompt`` asks providers with explicit
    prompt caching (Anthropic) to mark the static prefix (tools + system) and
    the conversation so far as cacheable.
    """

    model: str
    messages: tuple[Message, ...]
    system: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int = 4096
    temperature: float | None = None
    stop_sequences: tuple[str, ...] = ()
    cache_prompt: bool = True
    metadata: dict[str, str] = Field(default_factory=dict)


class ModelResponse(_Frozen):
    """One complete model answer."""

    id: str
    model: str
    provider: str
    content: tuple[ContentBlock, ...]
    finish_reason: FinishReason
    raw_finish_reason: str | None = None
    usage: Usage = Usage()
    simulated: bool = False
    # Set by the gateway, which prices each call at the deployment that served it:
    # when ``priced`` is True, ``cost_usd`` is the call's cost (None = price unknown).
    priced: bool = False
    cost_usd: Decimal | None = None

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall.from_block(b) for b in self.content if isinstance(b, ToolUseBlock)]

    def to_message(self) -> Message:
        return Message(role="assistant", content=self.content)


class TextDelta(_Frozen):
    """A piece of streamed text."""

    type: Literal["text_delta"] = "text_delta"
    text: str


class ToolUseDelta(_Frozen):
    """A piece of a streamed tool call: the first one carries id and name."""

    type: Literal["tool_use_delta"] = "tool_use_delta"
    index: int
    id: str | None = None
    name: str | None = None
    arguments_delta: str = ""


class ResponseDone(_Frozen):
    """The last event of every successful stream: the assembled response."""

    type: Literal["done"] = "done"
    response: ModelResponse


StreamEvent = TextDelta | ToolUseDelta | ResponseDone
