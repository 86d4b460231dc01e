"""Parking: a run on a worker that needs a person's approval parks instead of holding the worker, and the
decision — or the request's expiry, a denial — puts it back in the queue in the same transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.store import conftest as store_fixtures
from tether.guard.approvals import ApprovalRequest, ApprovalStatus, ApprovalStore, ParkingApprover, RunParked
from tether.store import TraceStore, open_store
from tether.store.runs import Claim, RunRecords, Submission

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


def request(run_id: str = "run-1", call_id: str = "call-1") -> ApprovalRequest:
    return ApprovalRequest(
        run_id=run_id,
        agent="support",
        tool="refund",
        call_id=call_id,
        arguments={"order": "7"},
        reason="refund is a write: a person must approve it",
        context={"task": "refund order 7"},
        turn=2,
    )


def running(records: RunRecords, run_id: str = "run-1") -> Claim:
    records.submit(Submission(agent="support", task="refund order 7", run_id=run_id))
    records.enqueued(run_id, "1-0")
    claim = records.claim(run_id, "w1", lease_s=30)
    assert claim is not None
    return claim


def park(store: TraceStore, clock: Clock | None = None, run_id: str = "run-1") -> tuple[RunRecords, str]:
    """A run that asked for an approval and parked on it, as the worker does."""
    records = RunRecords(store)
    claim = running(records, run_id)
    approver = ApprovalStore(store, clock=clock).parking_approver(timeout_s=60)
    with pytest.raises(RunParked) as parked:
        asyncio.run(approver(request(run_id)))
    records.park(claim.fence, approval_id=parked.value.approval_id)
    assert records.get(run_id).status == "parked"
    return records, parked.value.approval_id


def test_a_pending_request_parks_the_run(store: TraceStore) -> None:
    approvals = ApprovalStore(store)
    approver = approvals.parking_approver(timeout_s=60)
    assert isinstance(approver, ParkingApprover)

    with pytest.raises(RunParked) as parked:
        asyncio.run(approver(request()))

    pending = approvals.list()
    assert [a.id for a in pending] == [parked.value.approval_id] and parked.value.run_id == "run-1"
    assert f"tether approvals approve {parked.value.approval_id}" in str(parked.value)
    assert "\n" not in str(parked.value)
    with pytest.raises(RunParked) as again:  # asked again while undecided: the same request, parked again
        asyncio.run(approver(request()))
    assert again.value.approval_id == parked.value.approval_id and len(approvals.list()) == 1


@pytest.mark.parametrize("approve", [True, False])
def test_a_decided_request_returns_its_decision(store: TraceStore, approve: bool) -> None:
    approvals = ApprovalStore(store)
    approver = approvals.parking_approver(timeout_s=60)
    with pytest.raises(RunParked) as parked:
        asyncio.run(approver(request()))
    approvals.decide(parked.value.approval_id, approve=approve, by="alice", reason="checked")

    decided = asyncio.run(approver(request()))  # the resumed run asks the same decision

    assert decided.id == parked.value.approval_id and decided.decided_by == "alice"
    assert decided.status is (ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED)


def test_an_expired_request_returns_the_denial(store: TraceStore) -> None:
    clock = Clock()
    approvals = ApprovalStore(store, clock=clock)
    approver = approvals.parking_approver(timeout_s=60)
    with pytest.raises(RunParked):
        asyncio.run(approver(request()))
    clock.now = T0 + timedelta(seconds=61)

    answer = asyncio.run(approver(request()))

    assert answer.status is ApprovalStatus.EXPIRED and answer.decided_by == "timeout"


def test_the_timeout_must_be_positive(store: TraceStore) -> None:
    with pytest.raises(ValueError, match="must be > 0 s"):
        ApprovalStore(store).parking_approver(timeout_s=0)


@pytest.mark.parametrize("approve", [True, False])
def test_decide_unparks_the_run(store: TraceStore, approve: bool) -> None:
    records, approval = park(store)

    ApprovalStore(store).decide(approval, approve=approve, by="alice")

    record = records.get("run-1")
    assert record.status == "pending" and record.parked_on is None and record.stream_id is None
    again = records.claim("run-1", "w2", lease_s=30)
    assert again is not None and again.fence.token == 2


def test_expiry_unparks_the_run(store: TraceStore) -> None:
    clock = Clock()
    records, approval = park(store, clock)
    approvals = ApprovalStore(store, clock=clock)
    approvals.expire()
    assert records.get("run-1").status == "parked"  # not due yet

    clock.now = T0 + timedelta(seconds=61)
    assert approvals.expire() == 1

    assert records.get("run-1").status == "pending"
    assert approvals.get(approval).status is ApprovalStatus.EXPIRED


def test_deciding_one_approval_unparks_only_its_run(store: TraceStore) -> None:
    records, first = park(store, run_id="run-1")
    _, second = park(store, run_id="run-2")

    ApprovalStore(store).decide(second, approve=True, by="alice")

    assert records.get("run-1").status == "parked" and records.get("run-1").parked_on == first
    assert records.get("run-2").status == "pending"


def test_a_refused_decision_changes_no_run(store: TraceStore) -> None:
    records, approval = park(store)
    approvals = ApprovalStore(store)
    approvals.decide(approval, approve=False, by="alice")
    records.park(records.claim("run-1", "w2", lease_s=30).fence, approval_id=approval)  # type: ignore[union-attr]
    assert records.get("run-1").status == "pending"  # parking on a decided approval does not park

    with pytest.raises(Exception, match="already denied"):
        approvals.decide(approval, approve=True, by="bob")
    assert records.get("run-1").status == "pending"


def test_deciding_for_a_run_never_submitted_is_a_no_op_on_runs(store: TraceStore) -> None:
    approvals = ApprovalStore(store)
    with pytest.raises(RunParked) as parked:
        asyncio.run(approvals.parking_approver()(request("in-process")))
    decided = approvals.decide(parked.value.approval_id, approve=True, by="alice")
    assert decided.status is ApprovalStatus.APPROVED
    assert RunRecords(store).find("in-process") is None
