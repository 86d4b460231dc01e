"""Approvals: persisted, decided once by a person, expiring to a denial; a run waits for the decision."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.store import conftest as store_fixtures
from tether import semconv as sc
from tether.guard.approvals import (
    ApprovalAlreadyDecided,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalStore,
    UnknownApproval,
)
from tether.guard.guard import Guard
from tether.runtime import Agent
from tether.runtime.tools import tool
from tether.store import TraceStore, open_store
from tether.testing import ScriptedModel, SpanCapture, tool_response

backend = store_fixtures.backend
store_url = store_fixtures.store_url

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    with open_store(store_url) as opened:
        yield opened


def request(call_id: str = "call-1", **changes: object) -> ApprovalRequest:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "agent": "oncall",
        "tool": "restart_service",
        "call_id": call_id,
        "arguments": {"service": "checkout"},
        "reason": "restart_service is irreversible: a person must approve it",
        "context": {"task": "checkout is down"},
    }
    fields.update(changes)
    return ApprovalRequest(**fields)  # type: ignore[arg-type]


def test_a_request_is_stored_with_what_a_person_needs_and_decided_once(store: TraceStore) -> None:
    approvals = ApprovalStore(store)
    pending = approvals.request(request(), timeout_s=60)

    assert [a.id for a in approvals.list()] == [pending.id]
    assert pending.arguments == {"service": "checkout"} and pending.context == {"task": "checkout is down"}
    assert approvals.request(request(), timeout_s=60).id == pending.id  # the same call asked twice: one request

    decided = approvals.decide(pending.id, approve=True, by="alice", reason="checked the dashboard")
    assert (decided.status, decided.decided_by, decided.decision_reason) == (
        ApprovalStatus.APPROVED,
        "alice",
        "checked the dashboard",
    )
    assert approvals.list() == []
    with pytest.raises(ApprovalAlreadyDecided, match="already approved by alice"):
        approvals.decide(pending.id, approve=False, by="bob")
    assert approvals.get(pending.id).status is ApprovalStatus.APPROVED  # the second decision changed nothing


def test_an_unknown_request_is_a_clear_error(store: TraceStore) -> None:
    with pytest.raises(UnknownApproval, match="tether approvals list"):
        ApprovalStore(store).decide("nope", approve=True, by="alice")


def test_an_undecided_request_expires_to_a_denial(store: TraceStore) -> None:
    clock = Clock()
    approvals = ApprovalStore(store, clock=clock)
    pending = approvals.request(request(), timeout_s=30)
    clock.now += timedelta(seconds=31)

    assert approvals.get(pending.id).status is ApprovalStatus.EXPIRED
    with pytest.raises(ApprovalAlreadyDecided, match="expired"):
        approvals.decide(pending.id, approve=True, by="late")


def test_two_people_deciding_at_once_cannot_both_win(store: TraceStore) -> None:
    approvals = ApprovalStore(store)
    pending = approvals.request(request(), timeout_s=60)
    outcomes: list[str] = []

    def decide(approve: bool, who: str) -> None:
        try:
            approvals.decide(pending.id, approve=approve, by=who)
            outcomes.append(who)
        except ApprovalAlreadyDecided:
            outcomes.append("refused")

    threads = [threading.Thread(target=decide, args=(i % 2 == 0, f"p{i}")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("refused") == 7


RAN: list[str] = []


@tool(risk="irreversible")
def restart_service(service: str) -> str:
    """Restart a production service."""
    RAN.append(service)
    return f"{service} restarted"


async def run_waiting_for(store: TraceStore, approve: bool | None) -> tuple[object, SpanCapture, ApprovalStore]:
    """Run an agent that asks for a restart; decide it from 'another process' (a thread) while it waits."""
    RAN.clear()
    approvals = ApprovalStore(store)
    capture = SpanCapture()
    agent = Agent(
        "oncall",
        ScriptedModel([tool_response(("restart_service", {"service": "checkout"}))]),
        tools=[restart_service],
        tracer=capture.tracer,
        guard=Guard(approver=approvals.approver(timeout_s=0.5 if approve is None else 30, poll_s=0.02)),
    )
    task = asyncio.create_task(agent.run("checkout is down"))
    for _ in range(200):
        pending = await asyncio.to_thread(approvals.list)
        if pending:
            break
        await asyncio.sleep(0.02)
    assert len(pending) == 1 and pending[0].tool == "restart_service" and not RAN  # waiting, nothing ran
    if approve is not None:
        await asyncio.to_thread(approvals.decide, pending[0].id, approve=approve, by="alice", reason="ok")
    result = await task
    return result, capture, approvals


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
async def test_a_run_waits_for_approval_and_the_call_runs_once_approved(store: TraceStore) -> None:
    _, capture, _ = await run_waiting_for(store, approve=True)

    assert RAN == ["checkout"]
    span = next(s for s in capture.spans if s.name == "execute_tool restart_service")
    attributes = dict(span.attributes or {})
    assert attributes[sc.TETHER_GUARD_DECISION] == "approved"
    assert "by alice" in attributes[sc.TETHER_GUARD_REASON]
    assert [e.name for e in span.events] == ["tether.guard.approval_requested"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_denied_or_expired_request_never_runs(store: TraceStore) -> None:
    _, capture, _ = await run_waiting_for(store, approve=False)
    assert RAN == []
    _, capture, approvals = await run_waiting_for(store, approve=None)  # nobody decides: it expires
    assert RAN == []
    reason = dict(next(s for s in capture.spans if s.name == "execute_tool restart_service").attributes or {})
    assert "expired, so refused" in str(reason[sc.TETHER_GUARD_REASON])
    assert {a.status for a in approvals.list(status=None)} == {ApprovalStatus.DENIED, ApprovalStatus.EXPIRED}
