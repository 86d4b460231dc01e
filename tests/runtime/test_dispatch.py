"""Sub-agent calls through a Dispatcher: a sub-run started "elsewhere" joins its caller's run tree.

The fake dispatcher here runs each sub-run in a task of its own with a fresh ``contextvars.Context``
(only the dispatcher set in it, as a worker would), so nothing reaches the sub-run but its
``ParentLink`` — which goes through JSON on the way, as it would through the runs table.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from decimal import Decimal

import orjson
import pytest

from tether import semconv as sc
from tether.guard.approvals import RunParked
from tether.messages import ModelRequest, ModelResponse, StopReason, ToolResultBlock
from tether.runtime import Agent, Limits, ToolContext, delegation, tool
from tether.runtime.budget_tree import BudgetNode
from tether.runtime.delegation import DispatchResult, Hop, ParentLink, child_run_id
from tether.testing import FunctionModel, SpanCapture, text_response, tool_response


class FakeDispatcher:
    """Runs each sub-run as if on another worker: a fresh context, the link through JSON, results kept by id."""

    def __init__(self, *agents: Agent) -> None:
        self.agents = {a.name: a for a in agents}
        self.calls: list[tuple[str, str, ParentLink]] = []
        self.results: dict[str, DispatchResult] = {}

    def add(self, agent: Agent) -> None:
        self.agents[agent.name] = agent

    async def call(self, agent: str, task: str, *, run_id: str, parent: ParentLink) -> DispatchResult:
        self.calls.append((agent, run_id, parent))
        if run_id in self.results:  # a resumed caller finds the same child
            return self.results[run_id]
        link = ParentLink.from_json(orjson.dumps(parent.to_json()))
        context = contextvars.Context()
        context.run(delegation.current_dispatcher.set, self)
        task_ = asyncio.create_task(self.agents[agent].run(task, run_id=run_id, parent=link), context=context)
        result = (await task_).dispatched(worker=f"worker-{len(self.calls)}")
        self.results[run_id] = result
        return result


@pytest.fixture
def capture() -> Iterator[SpanCapture]:
    cap = SpanCapture()
    yield cap
    cap.shutdown()


def results(request: ModelRequest) -> list[str]:
    last = request.messages[-1]
    return [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []


def delegating(tool_name: str) -> FunctionModel:
    def answer(request: ModelRequest) -> ModelResponse:
        got = results(request)
        if got:
            return text_response(f"done: {got[0]}")
        return tool_response((tool_name, {"task": "please handle it"}, "call-1"))

    return FunctionModel(answer)


SEEN: list[delegation.Frame | None] = []


@tool
def where(context: ToolContext) -> str:
    """Say where this runs."""
    SEEN.append(delegation.current_frame())
    return "here"


def test_a_parent_link_survives_json() -> None:
    link = ParentLink(
        root_run_id="r0",
        parent_run_id="p1",
        depth=2,
        hops=(Hop("a", "b", 15, Decimal("0.0001")),),
        tree_tokens=30,
        budget=(BudgetNode("r0", "sup", max_tokens=1000, max_cost_usd=Decimal("0.5")),),
    )
    data = orjson.loads(orjson.dumps(link.to_json()))
    assert ParentLink.from_json(data) == link
    assert ParentLink.from_json(orjson.dumps(link.to_json()).decode()) == link
    with pytest.raises(ValueError, match="JSON object"):
        ParentLink.from_json("[1]")


async def test_a_dispatched_sub_run_joins_the_callers_tree_with_a_deterministic_id(capture: SpanCapture) -> None:
    SEEN.clear()

    def worker_model(request: ModelRequest) -> ModelResponse:
        return text_response("checked") if results(request) else tool_response(("where", {}))

    worker = Agent("worker", FunctionModel(worker_model), tools=[where], tracer=capture.tracer)
    supervisor = Agent("supervisor", delegating("ask_worker"), tools=[worker.as_tool()], tracer=capture.tracer)
    dispatcher = FakeDispatcher(worker)

    token = delegation.current_dispatcher.set(dispatcher)
    try:
        result = await supervisor.run("check it", run_id="sup-1")
    finally:
        delegation.current_dispatcher.reset(token)

    assert result.stop_reason is StopReason.COMPLETED and result.output == "done: checked"
    ((agent, child_id, link),) = dispatcher.calls
    assert agent == "worker" and child_id == child_run_id("sup-1", 1, "call-1") and len(child_id) == 16
    assert (link.root_run_id, link.parent_run_id, link.depth) == ("sup-1", "sup-1", 1)
    assert [(h.source, h.target) for h in link.hops] == [("supervisor", "worker")]
    assert [n.agent for n in link.budget] == ["supervisor"]
    # Inside the sub-run, its frame came from the link alone.
    (frame,) = SEEN
    assert frame is not None and frame.run_id == child_id and frame.depth == 1 and frame.parent_run_id == "sup-1"
    assert [n.run_id for n in frame.budget] == ["sup-1", child_id]
    sub = next(
        s for s in capture.by_operation(sc.OP_INVOKE_AGENT) if (s.attributes or {})[sc.GEN_AI_AGENT_NAME] == "worker"
    )
    attributes = dict(sub.attributes or {})
    assert attributes[sc.TETHER_PARENT_RUN_ID] == "sup-1" and attributes[sc.TETHER_RUN_DEPTH] == 1
    assert attributes[sc.TETHER_ROOT_RUN_ID] == "sup-1"
    # What the sub-run spent is the caller's tree's too: two model calls of 15 tokens.
    assert dispatcher.results[child_id].tokens == 30


async def test_a_bounce_across_workers_is_still_detected(capture: SpanCapture) -> None:
    limits = Limits(max_handoff_bounces=4)
    alice = Agent("alice", delegating("ask_bob"), limits=limits, tracer=capture.tracer)
    bob = Agent("bob", delegating("ask_alice"), limits=limits, tracer=capture.tracer)
    alice.add_tool(bob.as_tool())
    bob.add_tool(alice.as_tool())
    dispatcher = FakeDispatcher(alice, bob)

    token = delegation.current_dispatcher.set(dispatcher)
    try:
        result = await alice.run("who owns the payments alert?")
    finally:
        delegation.current_dispatcher.reset(token)

    assert result.stop_reason is StopReason.LOOP_DETECTED
    # alice → bob (worker 1) → alice (worker 2) → bob (worker 3), whose handoff back to alice is refused.
    assert [a for a, _, _ in dispatcher.calls] == ["bob", "alice", "bob"]
    runs = capture.by_operation(sc.OP_INVOKE_AGENT)
    assert len(runs) == 4
    assert all((s.attributes or {})[sc.TETHER_STOP_REASON] == "loop_detected" for s in runs)
    wasted = [s for s in runs if sc.TETHER_LOOP_WASTED_TOKENS in (s.attributes or {})]
    assert len(wasted) == 1 and (wasted[0].attributes or {})[sc.TETHER_RUN_DEPTH] == 3
    assert (wasted[0].attributes or {})[sc.TETHER_LOOP_WASTED_TOKENS] == 45  # as in one process


async def test_a_dispatched_sub_run_that_fails_is_a_failed_tool_call(capture: SpanCapture) -> None:
    def stuck(request: ModelRequest) -> ModelResponse:
        return tool_response(("where", {}))

    worker = Agent("worker", FunctionModel(stuck), tools=[where], limits=Limits(max_turns=2), tracer=capture.tracer)
    supervisor = Agent("supervisor", delegating("ask_worker"), tools=[worker.as_tool()], tracer=capture.tracer)
    token = delegation.current_dispatcher.set(FakeDispatcher(worker))
    try:
        result = await supervisor.run("check it")
    finally:
        delegation.current_dispatcher.reset(token)

    assert result.stop_reason is StopReason.COMPLETED
    assert "worker stopped with max_turns" in result.output


class Crash(BaseException):
    """The process dying mid-run (not an exception the run could catch)."""


async def test_a_resumed_caller_asks_for_the_same_child(tmp_path: object, capture: SpanCapture) -> None:
    from tether.guard.durable import DurableRuns
    from tether.store import open_store

    worker = Agent("worker", FunctionModel(lambda r: text_response("fine")), tracer=capture.tracer)
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        supervisor = Agent(
            "supervisor",
            delegating("ask_worker"),
            tools=[worker.as_tool()],
            durable=DurableRuns(store),
            tracer=capture.tracer,
        )
        dispatcher = FakeDispatcher(worker)
        seen: list[str] = []

        class Dying:
            async def call(self, agent: str, task: str, *, run_id: str, parent: ParentLink) -> DispatchResult:
                seen.append(run_id)
                raise Crash

        token = delegation.current_dispatcher.set(Dying())
        try:
            with pytest.raises(Crash):
                await supervisor.run("check it", run_id="sup-crash")
        finally:
            delegation.current_dispatcher.reset(token)
        token = delegation.current_dispatcher.set(dispatcher)
        try:
            result = await supervisor.resume("sup-crash")
        finally:
            delegation.current_dispatcher.reset(token)

    assert result.stop_reason is StopReason.COMPLETED
    assert [run_id for _, run_id, _ in dispatcher.calls] == seen == [child_run_id("sup-crash", 1, "call-1")]


async def test_without_a_dispatcher_sub_runs_stay_in_process(capture: SpanCapture) -> None:
    SEEN.clear()
    worker = Agent(
        "worker",
        FunctionModel(lambda r: text_response("ok") if results(r) else tool_response(("where", {}))),
        tools=[where],
        tracer=capture.tracer,
    )
    supervisor = Agent("supervisor", delegating("ask_worker"), tools=[worker.as_tool()], tracer=capture.tracer)

    result = await supervisor.run("check it")

    assert result.ok
    (frame,) = SEEN
    assert frame is not None and frame.parent_run_id == result.run_id and frame.tree.root_run_id == result.run_id


async def test_a_dispatcher_that_parks_parks_the_caller(capture: SpanCapture) -> None:
    class Parking:
        async def call(self, agent: str, task: str, *, run_id: str, parent: ParentLink) -> DispatchResult:
            raise RunParked("appr-7", run_id)

    worker = Agent("worker", FunctionModel(lambda r: text_response("fine")), tracer=capture.tracer)
    supervisor = Agent("supervisor", delegating("ask_worker"), tools=[worker.as_tool()], tracer=capture.tracer)
    token = delegation.current_dispatcher.set(Parking())
    try:
        result = await supervisor.run("check it")
    finally:
        delegation.current_dispatcher.reset(token)

    assert result.stop_reason is StopReason.PARKED and result.parked_on == "appr-7"
    assert result.messages[-1].role == "assistant"  # the batch is run again on resume


async def test_a_sub_run_resumed_with_its_link_stays_in_the_callers_tree(
    tmp_path: object, capture: SpanCapture
) -> None:
    from tether.guard.durable import DurableRuns
    from tether.store import open_store

    calls = 0

    def flaky(request: ModelRequest) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return tool_response(("where", {}))
        if calls == 2:
            raise Crash
        return text_response("ok")

    link = ParentLink(
        root_run_id="root-9", parent_run_id="parent-9", depth=2, hops=(Hop("x", "worker", 0, Decimal(0)),)
    )
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        worker = Agent("worker", FunctionModel(flaky), tools=[where], durable=DurableRuns(store), tracer=capture.tracer)
        with pytest.raises(Crash):
            await worker.run("check", run_id="child-9", parent=link)
        result = await worker.resume("child-9", parent=link)

    assert result.ok and result.hops == link.hops
    runs = capture.by_operation(sc.OP_INVOKE_AGENT)
    assert len(runs) == 2
    for span in runs:
        attributes = dict(span.attributes or {})
        assert attributes[sc.TETHER_PARENT_RUN_ID] == "parent-9" and attributes[sc.TETHER_RUN_DEPTH] == 2
        assert attributes[sc.TETHER_ROOT_RUN_ID] == "root-9"


async def test_a_bounce_is_detected_even_by_a_dispatcher_that_returns_no_hops(capture: SpanCapture) -> None:
    class Forgetful(FakeDispatcher):
        async def call(self, agent: str, task: str, *, run_id: str, parent: ParentLink) -> DispatchResult:
            result = await super().call(agent, task, run_id=run_id, parent=parent)
            return DispatchResult(result.run_id, result.ok, result.stop_reason, result.output, result.error)

    limits = Limits(max_handoff_bounces=4)
    alice = Agent("alice", delegating("ask_bob"), limits=limits, tracer=capture.tracer)
    bob = Agent("bob", delegating("ask_alice"), limits=limits, tracer=capture.tracer)
    alice.add_tool(bob.as_tool())
    bob.add_tool(alice.as_tool())
    dispatcher = Forgetful(alice, bob)

    token = delegation.current_dispatcher.set(dispatcher)
    try:
        result = await alice.run("who owns the payments alert?")
    finally:
        delegation.current_dispatcher.reset(token)

    assert result.stop_reason is StopReason.LOOP_DETECTED
    assert len(dispatcher.calls) == 3
    assert all(
        (s.attributes or {})[sc.TETHER_STOP_REASON] == "loop_detected" for s in capture.by_operation(sc.OP_INVOKE_AGENT)
    )
