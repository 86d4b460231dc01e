"""In-memory fakes for tests, tether's own and its users'.

- ``FunctionModel``: a model whose answers come from a Python function.
- ``ScriptedModel``: a model that plays a fixed list of answers, then says "done".
- ``text_response`` / ``tool_response``: build answers tersely.
- ``SpanCapture``: a tracer that keeps finished spans in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from tether.messages import (
    FinishReason,
    ModelRequest,
    ModelResponse,
    TextBlock,
    ToolUseBlock,
    Usage,
)
from tether.models.base import Model
from tether.pricing import PriceRef

__all__ = ["FunctionModel", "ScriptedModel", "SpanCapture", "text_response", "tool_response"]

_ids = itertools.count(1)


def text_response(text: str, *, usage: Usage | None = None, model: str = "test-model") -> ModelResponse:
    """A final answer."""
    return ModelResponse(
        id=f"resp_{next(_ids)}",
        model=model,
        provider="test",
        content=(TextBlock(text=text),),
        finish_reason=FinishReason.END_TURN,
        usage=usage or Usage(input_tokens=10, output_tokens=5),
    )


def tool_response(
    *calls: tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str],
    usage: Usage | None = None,
    model: str = "test-model",
) -> ModelResponse:
    """An answer asking for tool calls: ``tool_response(("query_logs", {"service": "api"}))``."""
    blocks: list[ToolUseBlock] = []
    for call in calls:
        name, args = call[0], call[1]
        call_id = call[2] if len(call) == 3 else f"call_{next(_ids)}"
        blocks.append(ToolUseBlock(id=call_id, name=name, input=args))
    return ModelResponse(
        id=f"resp_{next(_ids)}",
        model=model,
        provider="test",
        content=tuple(blocks),
        finish_reason=FinishReason.TOOL_USE,
        usage=usage or Usage(input_tokens=10, output_tokens=5),
    )


class FunctionModel(Model):
    """A model whose answer to each request is computed by ``fn`` (sync or async)."""

    provider = "test"

    def __init__(
        self,
        fn: Callable[[ModelRequest], ModelResponse | Awaitable[ModelResponse]],
        *,
        model_name: str = "test-model",
        price_ref: PriceRef | None = None,
    ) -> None:
        self.fn = fn
        self.model_name = model_name
        self.price_ref = price_ref
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        result = self.fn(request)
        if isinstance(result, ModelResponse):
            return result
        return await result


class ScriptedModel(FunctionModel):
    """Plays ``responses`` in order, one per call; after the last, answers ``"done"``."""

    def __init__(self, responses: Sequence[ModelResponse], **kwargs: Any) -> None:
        queue = list(responses)

        def next_response(request: ModelRequest) -> ModelResponse:
            return queue.pop(0) if queue else text_response("done")

        super().__init__(next_response, **kwargs)


class SpanCapture:
    """A tracer whose finished spans are kept in memory, exported synchronously."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("tether.test")

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def by_operation(self, operation: str) -> list[ReadableSpan]:
        return [s for s in self.spans if (s.attributes or {}).get("gen_ai.operation.name") == operation]

    def shutdown(self) -> None:
        self.provider.shutdown()
