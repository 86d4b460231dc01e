"""Fenced durable writes: once another worker has taken a run over, the old worker's checkpoint and ledger
writes are refused by the database and write nothing; without a fence they are as they always were."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.store import conftest as store_fixtures
from tether.guard.durable import DurableRuns, UnknownRun
from tether.guard.guard import Guard
from tether.messages import StopReason
from tether.runtime import Agent
from tether.runtime.tools import tool
from tether.store import TraceStore, open_store
from tether.store.runs import Claim, Fence, LeaseLost, RunRecords, Submission, fenced
from tether.testing import ScriptedModel, text_response, tool_response

backend = store_fixtures.backend
store_url = store_fixtures.store_url


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    with open_store(store_url) as opened:
        yield opened


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)
    return value


def taken_over(store: TraceStore, run_id: str = "run-1") -> tuple[Claim, Claim]:
    """A run claimed by w1 with a short lease, then — once the database's clock passed it — by w2."""
    records = RunRecords(store)
    records.submit(Submission(agent="support", task="refund order 7", run_id=run_id))
    old = records.claim(run_id, "w1", lease_s=0.1)
    assert old is not None

    def takeover() -> Claim | None:
        return records.claim(run_id, "w2", lease_s=30)

    new = wait_until(takeover, what="the lease to expire by the database clock")
    return old, new


def ledger_rows(store: TraceStore) -> list[dict[str, Any]]:
    with store.engine.connect() as connection:
        return [dict(r) for r in connection.execute(sa.text("SELECT * FROM tool_ledger ORDER BY 1")).mappings()]


def test_the_current_holder_writes_and_the_stale_one_is_refused(store: TraceStore) -> None:
    durable = DurableRuns(store)
    records = RunRecords(store)
    records.submit(Submission(agent="support", task="refund", run_id="run-1"))
    first = records.claim("run-1", "w1", lease_s=0.1)
    assert first is not None
    durable.save("run-1", "support", "running", {"turn": 1}, fence=first.fence)
    assert durable.intend("run-1:1:c1", run_id="run-1", agent="support", tool="refund", arguments={}, fence=first.fence)
    durable.mark("run-1:1:c1", "started", fence=first.fence)
    checkpoint, ledger = durable.load("run-1"), ledger_rows(store)

    second = wait_until(lambda: records.claim("run-1", "w2", lease_s=30), what="a takeover")
    assert second.fence.token == first.fence.token + 1

    with pytest.raises(LeaseLost, match="nothing was written"):
        durable.save("run-1", "support", "running", {"turn": 2, "stale": True}, fence=first.fence)
    with pytest.raises(LeaseLost):
        durable.mark("run-1:1:c1", "done", output="refunded twice", is_error=False, fence=first.fence)
    with pytest.raises(LeaseLost):
        durable.intend("run-1:2:c2", run_id="run-1", agent="support", tool="refund", arguments={}, fence=first.fence)
    with pytest.raises(LeaseLost):
        durable.intend(
            "run-1:1:c1", run_id="run-1", agent="support", tool="refund", arguments={}, attempt=2, fence=first.fence
        )
    assert durable.load("run-1") == checkpoint
    assert ledger_rows(store) == ledger

    # The new holder writes as usual.
    durable.save("run-1", "support", "running", {"turn": 2}, fence=second.fence)
    durable.mark("run-1:1:c1", "done", output="refunded", is_error=False, fence=second.fence)
    assert durable.load("run-1").state == {"turn": 2}
    effect = durable.effect("run-1:1:c1")
    assert effect is not None and effect.state == "done" and effect.output == "refunded"


def test_the_current_fence_is_used_by_default(store: TraceStore) -> None:
    durable = DurableRuns(store)
    old, new = taken_over(store)

    with fenced(new.fence):
        durable.save("run-1", "support", "running", {"turn": 1})
        assert durable.intend("run-1:1:c1", run_id="run-1", agent="support", tool="refund", arguments={})
        durable.mark("run-1:1:c1", "started")
    ledger = ledger_rows(store)
    with fenced(old.fence):
        with pytest.raises(LeaseLost):
            durable.save("run-1", "support", "finished", {"turn": 9})
        with pytest.raises(LeaseLost):
            durable.mark("run-1:1:c1", "done", output="x", is_error=False)
        with pytest.raises(LeaseLost):
            durable.intend("run-1:1:c9", run_id="run-1", agent="support", tool="refund", arguments={})
    assert durable.load("run-1").state == {"turn": 1} and ledger_rows(store) == ledger


def test_a_fence_of_a_finished_or_unknown_run_is_refused(store: TraceStore) -> None:
    durable = DurableRuns(store)
    records = RunRecords(store)
    records.submit(Submission(agent="support", task="t", run_id="run-1"))
    claim = records.claim("run-1", "w1", lease_s=30)
    assert claim is not None
    records.finish(claim.fence, stop_reason="completed", output="ok", error=None, cost_usd=None, tokens=1)

    with pytest.raises(LeaseLost):
        durable.save("run-1", "support", "running", {}, fence=claim.fence)
    with pytest.raises(LeaseLost):
        durable.save("ghost", "support", "running", {}, fence=Fence("ghost", 1))
    with pytest.raises(UnknownRun):
        durable.load("run-1")  # nothing was saved
    with pytest.raises(UnknownRun):
        durable.load("ghost")


def test_without_a_fence_writes_are_as_before(store: TraceStore) -> None:
    durable = DurableRuns(store)
    # No run row at all (an in-process run): nothing checks a lease.
    durable.save("solo", "support", "running", {"turn": 1})
    assert durable.intend("solo:1:c1", run_id="solo", agent="support", tool="refund", arguments={})
    durable.mark("solo:1:c1", "done", output="ok", is_error=False)
    assert durable.load("solo").state == {"turn": 1}
    effect = durable.effect("solo:1:c1")
    assert effect is not None and effect.state == "done"
    # Unfenced writes for a run in the table are not refused either (no worker claimed to be its writer).
    taken_over(store)
    durable.save("run-1", "support", "running", {"turn": 3})
    assert durable.load("run-1").state == {"turn": 3}


EFFECTS: list[str] = []


async def test_an_agent_that_lost_its_lease_mid_call_records_nothing_and_the_taker_repeats_nothing(
    store: TraceStore,
) -> None:
    EFFECTS.clear()
    records = RunRecords(store)
    records.submit(Submission(agent="support", task="refund order 7", run_id="run-a"))
    first = records.claim("run-a", "w1", lease_s=0.1)
    assert first is not None

    @tool(risk="write")
    def refund(order: str) -> str:
        """Refund an order."""
        EFFECTS.append(order)
        # While the call runs, the worker stalls past its lease and another worker takes the run over.
        wait_until(lambda: records.claim("run-a", "w2", lease_s=60), what="a takeover")
        return f"refunded {order}"

    # One model for both workers: it answers the resumed run's refused call with its last message.
    model = ScriptedModel([tool_response(("refund", {"order": "7"}, "c1")), text_response("done")])

    def agent() -> Agent:
        return Agent("support", model, tools=[refund], guard=Guard(), durable=DurableRuns(store))

    with fenced(first.fence), pytest.raises(LeaseLost):
        await agent().run("refund order 7", run_id="run-a")

    assert EFFECTS == ["7"]
    durable = DurableRuns(store)
    effect = durable.effect("run-a:1:c1")
    assert effect is not None and effect.state == "started"  # "done" was refused: its outcome is unknown
    checkpoint = durable.load("run-a")
    assert checkpoint.status != "finished"
    assert records.get("run-a").lease_owner == "w2" and records.get("run-a").status == "running"

    # The worker that took over resumes under its own fence: the unknown outcome goes to a person (here
    # there is none, so it is refused), never run blindly again.
    second = Fence("run-a", records.get("run-a").lease_token)
    with fenced(second):
        result = await agent().resume("run-a")
    assert EFFECTS == ["7"] and result.stop_reason is StopReason.COMPLETED
    effect = durable.effect("run-a:1:c1")
    assert effect is not None and effect.state == "started"  # still for a person to settle
    assert durable.load("run-a").status == "finished"
