"""Exactly-once across kill -9: an approved irreversible call never runs twice without a new decision by a person.

A real child process (``_exactly_once_agent.py``) runs an agent with a durable ledger, an
``ApprovalStore`` approver and one irreversible ``refund`` whose effect is a line in a file (fsync'd):
the file's lines are the executions. It is killed with SIGKILL at each step of the call, then the run
is resumed in a new process while this test plays the person, deciding through the ``ApprovalStore``.
Both stores: a SQLite file and a PostgreSQL schema.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.faults._support import tether_env, wait_until
from tether.guard.approvals import ApprovalStatus, ApprovalStore, StoredApproval
from tether.store import TraceStore, open_store

AGENT = Path(__file__).with_name("_exactly_once_agent.py")
SIGKILLED = -signal.SIGKILL


@dataclass
class Trial:
    """One run of the refund agent across processes, with the test as the person who decides."""

    tmp_path: Path
    url: str
    store: TraceStore
    run_id: str = "run-refund"
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def approvals(self) -> ApprovalStore:
        return ApprovalStore(self.store)

    @property
    def effects(self) -> Path:
        return self.tmp_path / "effects.log"

    def executions(self) -> int:
        return len(self.effects.read_text().splitlines()) if self.effects.exists() else 0

    def start(self, mode: str, crash_at: str = "") -> subprocess.Popen[str]:
        (self.tmp_path / "IN_EFFECT").unlink(missing_ok=True)
        env = tether_env(self.url, EFFECTS=str(self.effects), CRASH_AT=crash_at)
        child = subprocess.Popen(
            [sys.executable, str(AGENT), mode, self.run_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.children.append(child)
        return child

    def all_requests(self) -> list[StoredApproval]:
        return [a for a in self.approvals.list(status=None) if a.run_id == self.run_id]

    def pending(self, child: subprocess.Popen[str], *, seen: set[str] = frozenset()) -> StoredApproval:  # type: ignore[assignment]
        """The one pending request the child waits on (a new one, not among ``seen``); fails if it exits first."""
        found: list[StoredApproval] = []

        def asked() -> bool:
            found[:] = [a for a in self.approvals.list() if a.run_id == self.run_id and a.id not in seen]
            if not found and child.poll() is not None:
                out, err = child.communicate()
                raise AssertionError(
                    f"the process exited ({child.returncode}) without asking a person; "
                    f"executions={self.executions()}; stdout={out!r}; stderr={err[-2000:]!r}"
                )
            return bool(found)

        wait_until(asked, timeout_s=30, what="a pending approval request")
        assert len(found) == 1, found
        return found[0]

    def decide(self, request: StoredApproval, *, approve: bool) -> None:
        self.approvals.decide(request.id, approve=approve, by="person", reason="fault test")

    def finish(self, child: subprocess.Popen[str], *, returncode: int = 0) -> dict[str, object]:
        out, err = child.communicate(timeout=60)
        assert child.returncode == returncode, f"exit {child.returncode}: {err[-3000:]}"
        return orjson.loads(out.strip().splitlines()[-1]) if returncode == 0 else {}

    def kill(self, child: subprocess.Popen[str]) -> None:
        child.send_signal(signal.SIGKILL)
        self.finish(child, returncode=SIGKILLED)

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.fixture
def trial(tmp_path: Path, store_url: str) -> Iterator[Trial]:
    with open_store(store_url) as store:
        made = Trial(tmp_path, store_url, store)
        try:
            yield made
        finally:
            made.close()


def assert_is_review(request: StoredApproval, *, attempt: int) -> None:
    """An unknown-outcome review: a new request that tells the person to check the effect first."""
    shown = request.to_json()
    assert (shown["purpose"], shown["attempt"]) == ("unknown_outcome", attempt), shown
    assert "an earlier attempt may have run; check refund effect before approving" in str(shown["context"]), shown


def test_killed_while_the_approval_is_pending_then_after_it_before_the_intent_the_call_runs_once(
    trial: Trial,
) -> None:
    child = trial.start("run")
    asked = trial.pending(child)
    trial.kill(child)  # kill -9 while the request waits for a person

    resumed = trial.start("resume", crash_at="after_approval")
    again = trial.pending(resumed)
    assert again.id == asked.id  # nothing ran, so the same decision still stands open
    trial.decide(again, approve=True)
    trial.finish(resumed, returncode=SIGKILLED)  # dies once approved, before the ledger's intent
    assert trial.executions() == 0

    done = trial.finish(trial.start("resume"))  # no new question: the call never started, the approval stands
    assert done["told"] == ["refunded 30 on A-1"]
    assert trial.executions() == 1
    assert len(trial.all_requests()) == 1


def test_killed_during_the_effect_the_unknown_outcome_is_a_new_decision_and_a_denial_runs_nothing(
    trial: Trial,
) -> None:
    child = trial.start("run", crash_at="during_effect")
    first = trial.pending(child)
    trial.decide(first, approve=True)
    wait_until(lambda: (trial.tmp_path / "IN_EFFECT").exists(), timeout_s=30, what="the tool to be in its effect")
    trial.kill(child)
    assert trial.executions() == 0

    resumed = trial.start("resume")
    review = trial.pending(resumed, seen={first.id})
    assert_is_review(review, attempt=1)
    trial.decide(review, approve=False)
    done = trial.finish(resumed)
    told = orjson.loads(str(done["told"][0]))  # type: ignore[index]
    assert told["error"] == "approval_rejected" and "may have run" in told["message"], told
    assert trial.executions() == 0
    assert [a.status for a in trial.all_requests()] == [ApprovalStatus.APPROVED, ApprovalStatus.DENIED]


def test_killed_after_the_effect_before_done_every_retry_needs_a_new_approval(trial: Trial) -> None:
    child = trial.start("run", crash_at="after_effect")
    first = trial.pending(child)
    trial.decide(first, approve=True)
    trial.finish(child, returncode=SIGKILLED)
    assert trial.executions() == 1

    # The person approves running it again after checking; that attempt dies the same way.
    resumed = trial.start("resume", crash_at="after_effect")
    review = trial.pending(resumed, seen={first.id})
    assert_is_review(review, attempt=1)
    assert trial.executions() == 1  # nothing ran before the person decided
    trial.decide(review, approve=True)
    trial.finish(resumed, returncode=SIGKILLED)
    assert trial.executions() == 2

    # The second unknown outcome is yet another decision; the person says no.
    last = trial.start("resume")
    second_review = trial.pending(last, seen={first.id, review.id})
    assert_is_review(second_review, attempt=2)
    trial.decide(second_review, approve=False)
    assert trial.finish(last)["stop"] == "completed"
    assert trial.executions() == 2
    assert [a.status for a in trial.all_requests()] == [
        ApprovalStatus.APPROVED,
        ApprovalStatus.APPROVED,
        ApprovalStatus.DENIED,
    ]


def test_killed_after_done_the_resumed_run_replays_the_outcome(trial: Trial) -> None:
    child = trial.start("run", crash_at="after_done")
    trial.decide(trial.pending(child), approve=True)
    trial.finish(child, returncode=SIGKILLED)
    assert trial.executions() == 1

    done = trial.finish(trial.start("resume"))
    assert done["told"] == ["refunded 30 on A-1"]
    assert trial.executions() == 1
    assert len(trial.all_requests()) == 1
