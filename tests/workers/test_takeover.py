"""A run moves between workers and stays one run: one trace, resumed from its checkpoint; sub-agents as queued runs."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tests.workers.conftest import Infra, until, working
from tether import semconv as sc
from tether.messages import ModelRequest, ModelResponse, ToolResultBlock
from tether.runtime import tool
from tether.store.runs import Fence, RunRecords
from tether.testing import FunctionModel, text_response, tool_response
from tether.workers import await_run, submit_run


class LostLease(RunRecords):
    """The runs table as a worker sees it whose renewals are refused (as if it had been paused too long)."""

    def renew(self, fence: Fence, worker: str, *, lease_s: float) -> bool:
        return False


def told(request: ModelRequest) -> list[str]:
    last = request.messages[-1]
    return [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []


async def test_a_run_taken_over_resumes_on_the_other_worker_in_the_same_trace(infra: Infra) -> None:
    tt = infra.tether(lease_s=0.6, claim_idle_s=0.3)
    calls: list[str] = []

    @tool
    async def step() -> str:
        """Do the step."""
        calls.append("step")
        if len(calls) == 1:
            await asyncio.sleep(30)  # the first worker loses its lease here
        return "stepped"

    def answer(request: ModelRequest) -> ModelResponse:
        got = told(request)
        return text_response(f"finished after {got[0]}") if got else tool_response(("step", {}, "call-1"))

    model = FunctionModel(answer)
    tt.agent("stepper", model, tools=[step])
    async with working(tt, worker_id="first", lease_s=0.6, claim_idle_s=30) as first:
        first.worker.records = LostLease(tt.store)
        record, _ = await submit_run(tt.runs, tt.bus, tt.tracer, "stepper", "step once")
        run_id = record.run_id
        await until(lambda: first.worker.counts["lease_lost"], what="the first worker to lose its lease")
        async with working(tt, worker_id="second", lease_s=5, claim_idle_s=0.3):
            done = await await_run(tt.runs, run_id, timeout_s=20)
    assert done.stop_reason == "completed"
    assert done.output == "finished after stepped"
    assert done.worker == "second"
    assert done.deliveries == 2
    assert len(model.requests) == 2  # the first model call was not repeated: resumed from the checkpoint
    tt.flush()
    submitted = TraceContextTextMapPropagator().extract(dict(record.headers))
    from opentelemetry import trace as otel_trace

    trace_id = format(otel_trace.get_current_span(submitted).get_span_context().trace_id, "032x")
    spans = tt.store.get_run(run_id).spans
    agent_spans = [s for s in spans if s.operation == sc.OP_INVOKE_AGENT]
    assert len(agent_spans) == 2  # one per worker
    assert {s.trace_id for s in spans} == {trace_id}


async def test_a_sub_agent_call_runs_as_a_queued_run_of_the_same_tree(infra: Infra) -> None:
    tt = infra.tether()
    helper = tt.agent("helper", FunctionModel(lambda request: text_response("helped")))

    def supervise(request: ModelRequest) -> ModelResponse:
        got = told(request)
        return text_response(f"boss: {got[0]}") if got else tool_response(("ask_helper", {"task": "help"}, "c1"))

    tt.agent("boss", FunctionModel(supervise), tools=[helper.as_tool()])
    async with working(tt, concurrency=4):
        record, _ = await submit_run(tt.runs, tt.bus, tt.tracer, "boss", "delegate")
        done = await await_run(tt.runs, record.run_id, timeout_s=20)
    assert done.stop_reason == "completed"
    assert done.output == "boss: helped"
    tree = tt.runs.tree(record.run_id)
    by_agent: dict[str, Any] = {r.agent: r for r in tree}
    assert set(by_agent) == {"boss", "helper"}
    child = by_agent["helper"]
    assert child.parent_run_id == record.run_id
    assert child.root_run_id == record.run_id
    assert child.depth == 1
    assert child.status == "finished" and child.stop_reason == "completed"


async def test_a_handoff_bounce_across_workers_ends_the_whole_chain(infra: Infra) -> None:
    tt = infra.tether()

    def hand_over(to: str) -> FunctionModel:
        def answer(request: ModelRequest) -> ModelResponse:
            got = told(request)
            return (
                text_response(f"gave up: {got[0]}") if got else tool_response((f"ask_{to}", {"task": "you do it"}, "c"))
            )

        return FunctionModel(answer)

    ping = tt.agent("ping", hand_over("pong"))
    pong = tt.agent("pong", hand_over("ping"))
    ping.add_tool(pong.as_tool())
    pong.add_tool(ping.as_tool())
    async with working(tt, concurrency=16):
        record, _ = await submit_run(tt.runs, tt.bus, tt.tracer, "ping", "who does it?")
        done = await await_run(tt.runs, record.run_id, timeout_s=30)
    chain = tt.runs.tree(record.run_id)
    assert done.stop_reason == "loop_detected", [(r.agent, r.depth, r.stop_reason, r.error, r.output) for r in chain]
    assert 2 <= len(chain) <= 8  # stopped after a few handoffs, not at a step limit
    assert all(r.status == "finished" for r in chain)
