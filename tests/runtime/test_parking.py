"""Parking: a run that waits for a person holds no process; it resumes once the approval is decided.

The run parks after the rest of its batch is done, without keeping the batch's results: its checkpoint
stays at the model's tool calls, so ``resume`` runs the batch again — the done calls replayed from the
ledger, the decided approval found — and the approved call runs exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.trace import StatusCode

from tests.store import conftest as store_fixtures
from tether import semconv as sc
from tether.guard.approvals import ApprovalStore
from tether.guard.durable import DurableRuns
from tether.guard.guard import Guard
from tether.messages import ModelRequest, ModelResponse, StopReason, ToolResultBlock
from tether.runtime import Agent, tool
from tether.store import TraceStore
from tether.testing import FunctionModel, SpanCapture, text_response, tool_response

backend = store_fixtures.backend
store_url = store_fixtures.store_url
store = store_fixtures.store

EFFECTS: list[str] = []


@tool(risk="irreversible")
def refund(order: str) -> str:
    """Refund an order."""
    EFFECTS.append(f"refund:{order}")
    return f"refunded {order}"


@tool(risk="write")
def note(text: str) -> str:
    """Write a note on the ticket."""
    EFFECTS.append(f"note:{text}")
    return "noted"


def told(request: ModelRequest) -> list[str]:
    last = request.messages[-1]
    return [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []


def answer(request: ModelRequest) -> ModelResponse:
    got = told(request)
    if got:
        return text_response("result: " + " | ".join(got))
    return tool_response(("refund", {"order": "A-1"}, "c-refund"), ("note", {"text": "refund asked"}, "c-note"))


@pytest.fixture
def capture() -> Iterator[SpanCapture]:
    cap = SpanCapture()
    yield cap
    cap.shutdown()


def support_agent(store: TraceStore, capture: SpanCapture) -> tuple[Agent, ApprovalStore]:
    approvals = ApprovalStore(store)
    agent = Agent(
        "support",
        FunctionModel(answer),
        tools=[refund, note],
        guard=Guard(approver=approvals.parking_approver(timeout_s=600)),
        durable=DurableRuns(store),
        tracer=capture.tracer,
    )
    return agent, approvals


async def test_a_run_parks_then_resumes_once_approved_and_the_call_runs_once(
    store: TraceStore, capture: SpanCapture
) -> None:
    EFFECTS.clear()
    agent, approvals = support_agent(store, capture)

    parked = await agent.run("refund order A-1", run_id="run-park-1")

    assert parked.stop_reason is StopReason.PARKED and not parked.ok
    (pending,) = approvals.list()
    assert parked.parked_on == pending.id and pending.tool == "refund"
    assert EFFECTS == ["note:refund asked"]  # the rest of the batch ran; the refund waits
    assert DurableRuns(store).load("run-park-1").status == "parked"
    (root,) = capture.by_operation(sc.OP_INVOKE_AGENT)
    attributes = dict(root.attributes or {})
    assert attributes[sc.TETHER_STOP_REASON] == "parked"
    assert attributes[sc.TETHER_PARKED_ON] == pending.id
    assert root.status.status_code is not StatusCode.ERROR

    approvals.decide(pending.id, approve=True, by="alice")
    done = await agent.resume("run-park-1")

    assert done.stop_reason is StopReason.COMPLETED
    assert EFFECTS == ["note:refund asked", "refund:A-1"]  # each effect once: the note was replayed
    assert done.output == "result: refunded A-1 | noted"
    assert done.tool_calls == 2  # the batch counted once, not once per attempt
    assert DurableRuns(store).load("run-park-1").status == "finished"
    replayed = [
        s for s in capture.spans if s.name == "execute_tool note" and (s.attributes or {}).get(sc.TETHER_TOOL_REPLAYED)
    ]
    assert len(replayed) == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_denied_parked_call_is_told_to_the_model_and_the_run_completes(
    store: TraceStore, capture: SpanCapture
) -> None:
    EFFECTS.clear()
    agent, approvals = support_agent(store, capture)
    parked = await agent.run("refund order A-1", run_id="run-park-2")
    assert parked.parked_on is not None

    approvals.decide(parked.parked_on, approve=False, by="bob", reason="not this one")
    done = await agent.resume("run-park-2")

    assert done.stop_reason is StopReason.COMPLETED
    assert EFFECTS == ["note:refund asked"]
    assert "approval_rejected" in done.output and "not this one" in done.output
    assert not approvals.list()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_resuming_a_run_whose_approval_is_still_pending_parks_it_again(
    store: TraceStore, capture: SpanCapture
) -> None:
    EFFECTS.clear()
    agent, approvals = support_agent(store, capture)
    first = await agent.run("refund order A-1", run_id="run-park-3")

    again = await agent.resume("run-park-3")

    assert again.stop_reason is StopReason.PARKED and again.parked_on == first.parked_on
    assert len(approvals.list()) == 1  # the same request, not a second one
    assert EFFECTS == ["note:refund asked"]  # the note replayed from the ledger, not made twice
