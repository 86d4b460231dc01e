"""The agent loop: tools, limits, stop reasons, hallucinated calls, spans and cost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import orjson
import pytest
from opentelemetry.trace import StatusCode
from pydantic import ValidationError

from tether import semconv as sc
from tether.errors import ConfigError, ModelHTTPError, StreamInterrupted
from tether.messages import (
    FinishReason,
    ModelRequest,
    ModelResponse,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
)
from tether.pricing import PriceRef
from tether.redaction import default_scrubber
from tether.runtime import Agent, Limits, ToolContext, tool
from tether.testing import FunctionModel, ScriptedModel, SpanCapture, text_response, tool_response


@pytest.fixture
def capture() -> Iterator[SpanCapture]:
    cap = SpanCapture()
    yield cap
    cap.shutdown()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def slow_echo(text: str, seconds: float = 0.2) -> str:
    """Echo after a pause."""
    await asyncio.sleep(seconds)
    return text


def tool_results(request: ModelRequest) -> list[ToolResultBlock]:
    return [b for b in request.messages[-1].content if isinstance(b, ToolResultBlock)]


async def test_a_tool_call_then_an_answer_completes(capture: SpanCapture) -> None:
    model = ScriptedModel([tool_response(("add", {"a": 2, "b": 3})), text_response("5")])
    result = await Agent("calc", model, tools=[add], tracer=capture.tracer).run("2+3?")

    assert result.stop_reason is StopReason.COMPLETED
    assert result.output == "5"
    assert (result.turns, result.tool_calls, result.hallucinated_tool_calls) == (2, 1, 0)
    assert tool_results(model.requests[1])[0].content == "5"


async def test_unknown_tool_is_answered_with_a_structured_error_and_counted(capture: SpanCapture) -> None:
    model = ScriptedModel([tool_response(("kubectl_exec", {"cmd": "rm -rf /"})), text_response("sorry")])
    result = await Agent("calc", model, tools=[add], tracer=capture.tracer).run("do it")

    error = orjson.loads(tool_results(model.requests[1])[0].content)
    assert error["error"] == "unknown_tool"
    assert error["available_tools"] == ["add"]
    assert result.hallucinated_tool_calls == 1
    (span,) = capture.by_operation(sc.OP_EXECUTE_TOOL)
    assert span.attributes is not None and span.attributes[sc.TETHER_TOOL_HALLUCINATED] is True


async def test_arguments_failing_the_schema_are_reported_to_the_model(capture: SpanCapture) -> None:
    model = ScriptedModel([tool_response(("add", {"a": "two"})), text_response("ok")])
    result = await Agent("calc", model, tools=[add], tracer=capture.tracer).run("x")

    block = tool_results(model.requests[1])[0]
    error = orjson.loads(block.content)
    assert block.is_error and error["error"] == "invalid_arguments"
    assert any(p.startswith("a:") for p in error["problems"]) and any(p.startswith("b:") for p in error["problems"])
    assert result.hallucinated_tool_calls == 1


async def test_arguments_that_are_not_json_are_handled_inside_the_loop(capture: SpanCapture) -> None:
    bad = ModelResponse(
        id="r1",
        model="m",
        provider="test",
        content=(ToolUseBlock(id="c1", name="add", input={}, raw_arguments='{"a": 1, "b":'),),
        finish_reason=FinishReason.TOOL_USE,
    )
    model = ScriptedModel([bad, text_response("ok")])
    result = await Agent("calc", model, tools=[add], tracer=capture.tracer).run("x")

    assert result.stop_reason is StopReason.COMPLETED
    assert orjson.loads(tool_results(model.requests[1])[0].content)["received"] == '{"a": 1, "b":'
    (span,) = capture.by_operation(sc.OP_EXECUTE_TOOL)
    assert span.attributes is not None and span.attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS] == '{"a": 1, "b":'
    assert result.hallucinated_tool_calls == 1


async def test_a_failing_tool_is_reported_to_the_model_not_raised(capture: SpanCapture) -> None:
    @tool
    def explode() -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    model = ScriptedModel([tool_response(("explode", {})), text_response("handled")])
    result = await Agent("x", model, tools=[explode], tracer=capture.tracer).run("x")

    assert result.stop_reason is StopReason.COMPLETED
    assert "RuntimeError: disk on fire" in tool_results(model.requests[1])[0].content
    assert result.hallucinated_tool_calls == 0


async def test_parallel_tool_calls_in_one_turn_run_concurrently(capture: SpanCapture) -> None:
    calls = [("slow_echo", {"text": f"t{i}", "seconds": 0.2}) for i in range(4)]
    model = ScriptedModel([tool_response(*calls), text_response("done")])
    started = time.perf_counter()
    result = await Agent("x", model, tools=[slow_echo], tracer=capture.tracer).run("x")
    elapsed = time.perf_counter() - started

    assert result.tool_calls == 4
    assert elapsed < 0.6, f"4 tool calls of 0.2 s took {elapsed:.2f} s: they did not run in parallel"
    assert [b.content for b in tool_results(model.requests[1])] == ["t0", "t1", "t2", "t3"]


async def test_max_turns_stops_a_model_that_never_finishes(capture: SpanCapture) -> None:
    counter = iter(range(1000))
    model = FunctionModel(lambda r: tool_response(("add", {"a": next(counter), "b": 0})))
    result = await Agent("x", model, tools=[add], limits=Limits(max_turns=4), tracer=capture.tracer).run("x")

    assert result.stop_reason is StopReason.MAX_TURNS
    assert result.turns == 4


async def test_max_tool_calls_is_enforced_within_one_parallel_batch(capture: SpanCapture) -> None:
    ran: list[int] = []

    @tool
    def record(i: int) -> str:
        """Record i."""
        ran.append(i)
        return "ok"

    model = ScriptedModel([tool_response(*[("record", {"i": i}) for i in range(5)]), text_response("done")])
    agent = Agent("x", model, tools=[record], limits=Limits(max_tool_calls=3), tracer=capture.tracer)
    result = await agent.run("x")

    assert result.stop_reason is StopReason.MAX_TOOL_CALLS
    assert sorted(ran) == [0, 1, 2]
    assert result.tool_calls == 3


async def test_the_wall_clock_limit_ends_a_run_waiting_on_a_slow_model(capture: SpanCapture) -> None:
    async def slow(request: ModelRequest) -> ModelResponse:
        await asyncio.sleep(10)
        return text_response("late")

    started = time.perf_counter()
    agent = Agent("x", FunctionModel(slow), limits=Limits(timeout_s=0.2), tracer=capture.tracer)
    result = await agent.run("x")

    assert result.stop_reason is StopReason.TIMEOUT
    assert time.perf_counter() - started < 2
    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    assert root.attributes is not None and root.attributes[sc.TETHER_STOP_REASON] == "timeout"


async def test_identical_repeated_tool_calls_are_stopped_as_a_loop(capture: SpanCapture) -> None:
    model = FunctionModel(lambda r: tool_response(("add", {"a": 1, "b": 1})))
    agent = Agent("x", model, tools=[add], limits=Limits(max_repeated_tool_calls=3), tracer=capture.tracer)
    result = await agent.run("x")

    assert result.stop_reason is StopReason.LOOP_DETECTED
    assert result.tool_calls == 3
    assert "3 times" in (result.error or "")


async def test_a_done_condition_ends_the_run_as_soon_as_it_holds(capture: SpanCapture) -> None:
    model = FunctionModel(lambda r: tool_response(("add", {"a": len(r.messages), "b": 0})))
    agent = Agent("x", model, tools=[add], done_condition=lambda s: s.tool_calls >= 2, tracer=capture.tracer)
    result = await agent.run("x")

    assert result.stop_reason is StopReason.DONE_CONDITION
    assert result.tool_calls == 2


async def test_a_provider_error_ends_the_run_with_error_and_a_failed_chat_span(capture: SpanCapture) -> None:
    def fail(request: ModelRequest) -> ModelResponse:
        raise ModelHTTPError(503, '{"error": "overloaded"}', provider="test")

    result = await Agent("x", FunctionModel(fail), tracer=capture.tracer).run("x")

    assert result.stop_reason is StopReason.ERROR
    assert "HTTP 503" in (result.error or "")
    (chat,) = capture.by_operation(sc.OP_CHAT)
    assert chat.attributes is not None and chat.attributes[sc.ERROR_TYPE] == "ModelHTTPError"
    assert not chat.status.is_ok


async def test_a_cancelled_run_records_killed_and_reraises(capture: SpanCapture) -> None:
    async def slow(request: ModelRequest) -> ModelResponse:
        await asyncio.sleep(10)
        return text_response("late")

    task = asyncio.create_task(Agent("x", FunctionModel(slow), tracer=capture.tracer).run("x"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    assert root.attributes is not None and root.attributes[sc.TETHER_STOP_REASON] == "killed"


async def test_cost_is_priced_from_usage_including_cache_tokens(capture: SpanCapture) -> None:
    usage = Usage(input_tokens=1000, output_tokens=100, cache_read_tokens=500, cache_write_tokens=200)
    model = ScriptedModel([text_response("hi", usage=usage)], price_ref=PriceRef("anthropic", "claude-sonnet-4-5"))
    result = await Agent("x", model, tracer=capture.tracer).run("x")

    # 300 uncached x $3/M + 500 cache read x $0.30/M + 200 cache write x $3.75/M + 100 out x $15/M
    assert result.cost_usd == Decimal("0.0009") + Decimal("0.00015") + Decimal("0.00075") + Decimal("0.0015")
    (chat,) = capture.by_operation(sc.OP_CHAT)
    assert chat.attributes is not None
    assert chat.attributes[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 500
    assert chat.attributes[sc.TETHER_COST_USD] == pytest.approx(0.0033)
    assert sc.TETHER_COST_KNOWN not in chat.attributes  # only an unknown price is flagged


async def test_an_unknown_price_is_unknown_not_zero(capture: SpanCapture) -> None:
    model = ScriptedModel([text_response("hi")], price_ref=PriceRef("anthropic", "claude-does-not-exist"))
    result = await Agent("x", model, tracer=capture.tracer).run("x")

    assert result.cost_usd is None
    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    assert root.attributes is not None and root.attributes[sc.TETHER_COST_KNOWN] is False


async def test_spans_form_one_tree_per_run_with_genai_attributes(capture: SpanCapture) -> None:
    model = ScriptedModel([tool_response(("add", {"a": 1, "b": 2})), text_response("3")])
    result = await Agent("calc", model, tools=[add], tracer=capture.tracer).run("1+2")

    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    chats = capture.by_operation(sc.OP_CHAT)
    (tool_span,) = capture.by_operation(sc.OP_EXECUTE_TOOL)
    assert root.parent is None and len(chats) == 2
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in [*chats, tool_span])
    assert {s.context.trace_id for s in capture.spans} == {root.context.trace_id}
    assert all((s.attributes or {})[sc.TETHER_RUN_ID] == result.run_id for s in capture.spans)
    assert root.name == "invoke_agent calc" and tool_span.name == "execute_tool add"
    assert tool_span.attributes is not None
    assert tool_span.attributes[sc.GEN_AI_TOOL_CALL_RESULT] == "3"
    assert root.attributes is not None and root.attributes[sc.TETHER_TURNS] == 2


async def test_tool_payloads_on_spans_are_capped(capture: SpanCapture) -> None:
    @tool
    def big() -> str:
        """Return a lot."""
        return "x" * 10_000

    model = ScriptedModel([tool_response(("big", {})), text_response("ok")])
    await Agent("x", model, tools=[big], tracer=capture.tracer, payload_chars=100).run("x")

    (span,) = capture.by_operation(sc.OP_EXECUTE_TOOL)
    assert span.attributes is not None
    assert len(str(span.attributes[sc.GEN_AI_TOOL_CALL_RESULT])) < 150
    assert len(tool_results(model.requests[1])[0].content) == 10_000  # the model still sees all of it


async def test_tools_receive_their_context(capture: SpanCapture) -> None:
    seen: list[ToolContext] = []

    @tool
    def whoami(ctx: ToolContext) -> str:
        """Report the context."""
        seen.append(ctx)
        return ctx.idempotency_key

    model = ScriptedModel([tool_response(("whoami", {}, "call_9")), text_response("ok")])
    result = await Agent("me", model, tools=[whoami], tracer=capture.tracer).run("x", run_id="run1")

    assert seen[0].idempotency_key == "run1:1:call_9"
    assert whoami.spec.input_schema["properties"] == {}
    assert result.run_id == "run1"


async def test_a_cut_stream_is_an_error_never_a_success(capture: SpanCapture) -> None:
    class CutStream(FunctionModel):
        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            yield TextDelta(text="The root cause is")
            raise StreamInterrupted("connection closed mid-answer", provider="test", partial_text="The root cause is")

    model = CutStream(lambda r: text_response("unused"))
    result = await Agent("x", model, stream=True, tracer=capture.tracer).run("x")

    assert result.stop_reason is StopReason.ERROR
    assert "mid-answer" in (result.error or "")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        Limits(max_turns=0)
    with pytest.raises(ValidationError):
        Limits(timeout_s=-1)


def test_tools_must_be_tools_and_uniquely_named() -> None:
    with pytest.raises(TypeError, match="@tool"):
        Agent("x", ScriptedModel([]), tools=[print])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unique"):
        Agent("x", ScriptedModel([]), tools=[add, add])


async def test_the_same_batch_of_parallel_calls_repeated_is_a_loop(capture: SpanCapture) -> None:
    model = FunctionModel(lambda r: tool_response(("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})))
    agent = Agent("x", model, tools=[add], limits=Limits(max_repeated_tool_calls=3), tracer=capture.tracer)
    result = await agent.run("x")

    assert result.stop_reason is StopReason.LOOP_DETECTED
    assert result.tool_calls == 6
    assert "the same 2 parallel calls were made 3 times in a row" in (result.error or "")
    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    assert root.attributes is not None and root.attributes[sc.TETHER_LOOP_WASTED_TOKENS] == 30


async def test_parallel_batches_that_change_are_not_a_loop(capture: SpanCapture) -> None:
    def answer(request: ModelRequest) -> ModelResponse:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn >= 4:
            return text_response("done")
        return tool_response(("add", {"a": turn, "b": 1}), ("add", {"a": turn, "b": 2}))

    result = await Agent("x", FunctionModel(answer), tools=[add], tracer=capture.tracer).run("x")
    assert result.stop_reason is StopReason.COMPLETED


async def test_a_model_that_raises_ends_the_run_with_error_on_its_root_span_and_reraises(
    capture: SpanCapture,
) -> None:
    # What `anthropic:…` does with no ANTHROPIC_API_KEY: not a provider error, an exception out of the call.
    def no_key(request: ModelRequest) -> ModelResponse:
        raise ConfigError("environment variable ANTHROPIC_API_KEY is not set: export it with your API key")

    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        await Agent("x", FunctionModel(no_key), tracer=capture.tracer).run("x")

    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    attributes = root.attributes or {}
    assert attributes[sc.TETHER_STOP_REASON] == StopReason.ERROR.value
    assert attributes[sc.ERROR_TYPE] == "ConfigError"
    assert "ANTHROPIC_API_KEY is not set" in str(attributes[sc.TETHER_ERROR_MESSAGE])
    assert root.status.status_code is StatusCode.ERROR
    (chat,) = capture.by_operation(sc.OP_CHAT)
    assert (chat.attributes or {})[sc.ERROR_TYPE] == "ConfigError"
    assert chat.end_time is not None


async def test_the_error_recorded_on_the_root_span_is_scrubbed(capture: SpanCapture) -> None:
    secret = "sk-verysecret-0123456789abcdef"
    default_scrubber().register("test_token", secret)

    def leak(request: ModelRequest) -> ModelResponse:
        raise RuntimeError(f"upstream rejected token {secret}")

    with pytest.raises(RuntimeError):
        await Agent("x", FunctionModel(leak), tracer=capture.tracer).run("x")

    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    message = str((root.attributes or {})[sc.TETHER_ERROR_MESSAGE])
    assert secret not in message
    assert "[secret:test_token]" in message
    assert secret not in (root.status.description or "")
    assert (root.attributes or {})[sc.ERROR_TYPE] == "RuntimeError"


async def test_a_done_condition_that_raises_still_ends_the_run(capture: SpanCapture) -> None:
    def broken(state: object) -> bool:
        raise ValueError("bad condition")

    model = ScriptedModel([tool_response(("add", {"a": 1, "b": 2})), text_response("3")])
    with pytest.raises(ValueError, match="bad condition"):
        await Agent("x", model, tools=[add], done_condition=broken, tracer=capture.tracer).run("x")

    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    assert (root.attributes or {})[sc.TETHER_STOP_REASON] == StopReason.ERROR.value
    assert (root.attributes or {})[sc.TETHER_TOOL_CALLS] == 1


async def test_a_provider_error_puts_its_type_on_the_root_span(capture: SpanCapture) -> None:
    def fail(request: ModelRequest) -> ModelResponse:
        raise ModelHTTPError(503, '{"error": "overloaded"}', provider="test")

    result = await Agent("x", FunctionModel(fail), tracer=capture.tracer).run("x")

    assert result.stop_reason is StopReason.ERROR
    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    assert (root.attributes or {})[sc.ERROR_TYPE] == "ModelHTTPError"
    assert root.status.status_code is StatusCode.ERROR
