"""Agents calling agents: sub-runs in one trace, and the loop detector for agents that bounce work back and forth."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tether import semconv as sc
from tether.messages import ModelRequest, ModelResponse, StopReason, ToolResultBlock
from tether.runtime import Agent, Limits, tool
from tether.testing import FunctionModel, SpanCapture, text_response, tool_response


@pytest.fixture
def capture() -> Iterator[SpanCapture]:
    cap = SpanCapture()
    yield cap
    cap.shutdown()


def results(request: ModelRequest) -> list[str]:
    last = request.messages[-1]
    return [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []


def task_of(request: ModelRequest) -> str:
    return request.messages[0].text


def delegating(tool_name: str) -> FunctionModel:
    """A model that hands every task on to ``tool_name`` and then answers with what came back."""

    def answer(request: ModelRequest) -> ModelResponse:
        got = results(request)
        if got:
            return text_response(f"done: {got[0]}")
        return tool_response((tool_name, {"task": f"please handle: {task_of(request)[:40]}"}))

    return FunctionModel(answer)


@tool
def restart(service: str) -> str:
    """Restart a service."""
    return f"{service} restarted"


async def test_a_supervisor_delegates_to_a_worker_in_one_trace(capture: SpanCapture) -> None:
    def worker_model(request: ModelRequest) -> ModelResponse:
        if results(request):
            return text_response("checkout restarted")
        return tool_response(("restart", {"service": "checkout"}))

    worker = Agent("worker", FunctionModel(worker_model), tools=[restart], tracer=capture.tracer)
    supervisor = Agent("supervisor", delegating("ask_worker"), tools=[worker.as_tool()], tracer=capture.tracer)

    result = await supervisor.run("checkout is down")

    assert result.stop_reason is StopReason.COMPLETED
    assert result.output == "done: checkout restarted"
    roots = {s.attributes[sc.GEN_AI_AGENT_NAME]: s for s in capture.by_operation(sc.OP_INVOKE_AGENT)}  # type: ignore[index]
    sub, top = roots["worker"], roots["supervisor"]
    assert sub.context.trace_id == top.context.trace_id
    assert sub.attributes is not None and sub.attributes[sc.TETHER_PARENT_RUN_ID] == result.run_id
    assert sub.attributes[sc.TETHER_RUN_DEPTH] == 1
    assert sub.attributes[sc.TETHER_RUN_ID] != result.run_id
    (handoff,) = [s for s in capture.by_operation(sc.OP_EXECUTE_TOOL) if s.name.endswith("ask_worker")]
    assert sub.parent is not None and sub.parent.span_id == handoff.context.span_id
    assert top.attributes is not None and sc.TETHER_PARENT_RUN_ID not in top.attributes


async def test_a_sub_run_that_fails_is_a_failed_tool_call_for_the_caller(capture: SpanCapture) -> None:
    looping = FunctionModel(lambda r: tool_response(("restart", {"service": "api"})))
    worker = Agent("worker", looping, tools=[restart], limits=Limits(max_repeated_tool_calls=2), tracer=capture.tracer)
    supervisor = Agent("supervisor", delegating("ask_worker"), tools=[worker.as_tool()], tracer=capture.tracer)

    result = await supervisor.run("api is down")

    # The worker's own loop is its problem: the supervisor is told and may change course.
    assert result.stop_reason is StopReason.COMPLETED
    assert "worker stopped with loop_detected" in result.output


async def test_two_agents_bouncing_work_back_and_forth_end_with_loop_detected(capture: SpanCapture) -> None:
    limits = Limits(max_handoff_bounces=4)
    alice = Agent("alice", delegating("ask_bob"), limits=limits, tracer=capture.tracer)
    bob = Agent("bob", delegating("ask_alice"), limits=limits, tracer=capture.tracer)
    alice.add_tool(bob.as_tool())
    bob.add_tool(alice.as_tool())

    result = await alice.run("who owns the payments alert?")

    assert result.stop_reason is StopReason.LOOP_DETECTED
    assert "handed the work back and forth 4 times" in (result.error or "")
    runs = capture.by_operation(sc.OP_INVOKE_AGENT)
    # alice → bob → alice → bob, whose handoff back to alice (the 4th) is refused: four runs, all ended.
    assert len(runs) == 4
    assert all(s.attributes is not None and s.attributes[sc.TETHER_STOP_REASON] == "loop_detected" for s in runs)
    # What the bouncing cost is recorded once, on the run whose handoff was refused (the deepest).
    wasted = [s for s in runs if s.attributes is not None and sc.TETHER_LOOP_WASTED_TOKENS in s.attributes]
    assert len(wasted) == 1
    assert wasted[0].attributes is not None and wasted[0].attributes[sc.TETHER_RUN_DEPTH] == 3
    # Three handoffs after the first, each followed by one model call of 15 tokens.
    assert wasted[0].attributes[sc.TETHER_LOOP_WASTED_TOKENS] == 45


async def test_an_agent_that_keeps_calling_itself_is_a_loop(capture: SpanCapture) -> None:
    echo = Agent("echo", delegating("ask_echo"), limits=Limits(max_handoff_bounces=3), tracer=capture.tracer)
    echo.add_tool(echo.as_tool())

    result = await echo.run("go")

    assert result.stop_reason is StopReason.LOOP_DETECTED
    assert len(capture.by_operation(sc.OP_INVOKE_AGENT)) == 3


async def test_a_supervisor_asking_two_workers_in_turn_is_not_a_loop(capture: SpanCapture) -> None:
    def worker(name: str) -> Agent:
        return Agent(name, FunctionModel(lambda r: text_response(f"{name} ok")), tracer=capture.tracer)

    plan = ["ask_logs", "ask_metrics", "ask_logs", "ask_metrics", "ask_logs", "ask_metrics"]

    def supervise(request: ModelRequest) -> ModelResponse:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn < len(plan):
            return tool_response((plan[turn], {"task": f"step {turn}"}))
        return text_response("all checked")

    supervisor = Agent(
        "supervisor",
        FunctionModel(supervise),
        tools=[worker("logs").as_tool(), worker("metrics").as_tool()],
        limits=Limits(max_handoff_bounces=2),
        tracer=capture.tracer,
    )

    result = await supervisor.run("check everything")

    assert result.stop_reason is StopReason.COMPLETED
    assert result.tool_calls == 6


def test_a_tool_name_must_be_new() -> None:
    agent = Agent("a", FunctionModel(lambda r: text_response("x")), tools=[restart])
    with pytest.raises(ValueError, match="already"):
        agent.add_tool(restart)
