"""A kill ends, in its own commit, the submitted runs no worker holds: queued and parked ones."""

from __future__ import annotations

from tether.guard.kill import KillStore, new_kill
from tether.store import TraceStore
from tether.store.runs import RunRecords, Submission


def _submitted(records: RunRecords, agent: str, task: str) -> str:
    record, _ = records.submit(Submission(agent=agent, task=task))
    return record.run_id


def test_a_kill_of_a_run_ends_it_when_queued_and_names_it(store: TraceStore) -> None:
    records = RunRecords(store)
    queued = _submitted(records, "oncall", "a")
    other = _submitted(records, "oncall", "b")
    kills = KillStore(store)
    ended = kills.add(new_kill("run", queued, "runaway", "sre@host"))
    assert ended == [queued]
    row = records.get(queued)
    assert (row.status, row.stop_reason) == ("finished", "killed")
    assert row.error is not None and "runaway" in row.error and "sre@host" in row.error
    assert records.get(other).status == "pending"
    assert records.claim(queued, "w1", lease_s=30) is None  # a worker that gets its message later skips it


def test_a_kill_of_an_agent_ends_its_queued_and_parked_runs_but_not_running_ones(store: TraceStore) -> None:
    records = RunRecords(store)
    queued = _submitted(records, "oncall", "a")
    parked = _submitted(records, "oncall", "b")
    running = _submitted(records, "oncall", "c")
    elsewhere = _submitted(records, "billing", "d")
    claim = records.claim(parked, "w1", lease_s=30)
    assert claim is not None
    records.park(claim.fence, approval_id="ap1")
    assert records.claim(running, "w1", lease_s=30) is not None
    ended = KillStore(store).add(new_kill("agent", "oncall", "bad deploy", None))
    assert ended == sorted([queued, parked])
    assert records.get(running).status == "running"  # its worker's kill switch stops it
    assert records.get(elsewhere).status == "pending"


def test_a_kill_of_everything_ends_every_waiting_run(store: TraceStore) -> None:
    records = RunRecords(store)
    ids = sorted(_submitted(records, agent, "x") for agent in ("a", "b", "c"))
    assert KillStore(store).add(new_kill("all", None, "stop the world", None)) == ids
    assert records.counts().get("pending", 0) == 0
