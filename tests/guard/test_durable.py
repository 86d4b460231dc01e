"""Durable runs: a run resumes from its checkpoint in a new process, never repeating a call that happened,
and an outcome the ledger cannot vouch for goes to a person instead of a blind retry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy import select

from tests.store import conftest as store_fixtures
from tether.guard.approvals import ApprovalRequest, ApprovalStatus, ApprovalStore, StoredApproval
from tether.guard.durable import DurableRuns, Effect, EffectState, UnknownRun, arguments_hash
from tether.guard.guard import Guard
from tether.messages import ModelRequest, ModelResponse, StopReason, ToolResultBlock
from tether.runtime import Agent
from tether.runtime.tools import tool
from tether.store import TraceStore, open_store
from tether.store.engine import create_store_engine
from tether.store.migrations import MIGRATIONS, migrate
from tether.store.schema import tool_ledger
from tether.store.url import parse_store_url
from tether.testing import FunctionModel, ScriptedModel, text_response, tool_response

backend = store_fixtures.backend
store_url = store_fixtures.store_url

# One agent definition, used by the first process (which dies) and the one that resumes.
AGENT_MODULE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from tether.guard.approvals import ApprovalRequest
    from tether.guard.durable import DurableRuns
    from tether.guard.guard import Guard
    from tether.runtime import Agent
    from tether.runtime.tools import tool
    from tether.store import open_store
    from tether.testing import FunctionModel, text_response, tool_response

    WORK = Path(os.environ["DURABLE_WORK"])
    CRASH_IN = os.environ.get("CRASH_IN", "")

    def effect(name: str) -> None:
        with (WORK / "effects.log").open("a") as f:
            f.write(name + "\\n")

    @tool(risk="write")
    def refund(order: str, amount: int) -> str:
        \"\"\"Refund an order.\"\"\"
        effect(f"refund:{order}")
        return f"refunded {amount} on {order}"

    STORE = None

    @tool(risk="write")
    def notify(customer: str) -> str:
        \"\"\"Tell the customer.\"\"\"
        if CRASH_IN == "notify":
            # The batch's calls run side by side: die only once the refund is done and in the ledger.
            import time
            durable = DurableRuns(STORE)
            for _ in range(500):
                rows = [durable.effect(k) for k in durable_keys()]
                if any(r is not None and r.tool == "refund" and r.state == "done" for r in rows):
                    break
                time.sleep(0.01)
        effect(f"notify:{customer}")
        if CRASH_IN == "notify":
            os._exit(3)  # the process dies after the effect, before the ledger hears of it
        return "notified"

    def durable_keys():
        from sqlalchemy import select
        from tether.store.schema import tool_ledger
        with STORE.engine.connect() as c:
            return list(c.scalars(select(tool_ledger.c.idempotency_key)))

    async def approver(request: ApprovalRequest) -> bool:
        (WORK / "asked.log").open("a").write(request.tool + ": " + request.reason + "\\n")
        return os.environ.get("APPROVE") == "1"

    def agent(store):
        global STORE
        STORE = store
        def answer(request):
            # Asks for the two calls once; with their results in the transcript, it answers.
            if len(request.messages) == 1:
                return tool_response(("refund", {"order": "A-1", "amount": 30}), ("notify", {"customer": "c-9"}))
            return text_response("refunded and notified")
        model = FunctionModel(answer)
        guard = Guard(approver=approver)
        return Agent("support", model, tools=[refund, notify], guard=guard, durable=DurableRuns(store))
    """
)

DRIVER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    import durable_agent
    from tether.store import open_store

    async def main(mode: str, url: str) -> None:
        with open_store(url) as store:
            agent = durable_agent.agent(store)
            if mode == "run":
                result = await agent.run("refund order A-1 and tell the customer", run_id="run-d1")
            else:
                result = await agent.resume("run-d1")
            print(result.stop_reason.value, result.output)

    asyncio.run(main(sys.argv[2], sys.argv[3]))
    """
)


def drive(tmp_path: Path, mode: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "durable_agent.py").write_text(AGENT_MODULE)
    import os

    environment = {**os.environ, "DURABLE_WORK": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path), mode, url],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


def effects(tmp_path: Path) -> list[str]:
    log = tmp_path / "effects.log"
    return log.read_text().split() if log.exists() else []


@pytest.mark.parametrize("approve", ["0", "1"], ids=["the person says no", "the person says yes"])
def test_a_run_resumed_after_a_crash_repeats_no_done_call_and_asks_about_the_unknown_one(
    tmp_path: Path, approve: str
) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    first = drive(tmp_path, "run", url, CRASH_IN="notify")
    assert first.returncode == 3, first.stderr
    assert effects(tmp_path) == ["refund:A-1", "notify:c-9"]  # both happened; the process died in the second

    second = drive(tmp_path, "resume", url, APPROVE=approve)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("completed"), second.stdout

    # The refund was done and recorded: replayed, not repeated. The notify's outcome was unknown: a person
    # was asked, and it ran again only if they said so.
    expected = ["refund:A-1", "notify:c-9"] + (["notify:c-9"] if approve == "1" else [])
    assert effects(tmp_path) == expected
    asked = (tmp_path / "asked.log").read_text()
    assert asked.count("notify:") == 1 and "outcome is unknown" in asked and "refund" not in asked
    with open_store(url) as store:
        durable = DurableRuns(store)
        assert durable.load("run-d1").status == "finished"
        assert durable.unfinished("support") == []


RAN: list[str] = []


@tool(risk="write")
def bump(counter: str) -> str:
    """Bump a counter."""
    RAN.append(counter)
    return f"{counter}+1"


async def test_a_finished_run_is_checkpointed_and_cannot_be_resumed(tmp_path: Path) -> None:
    RAN.clear()
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        durable = DurableRuns(store)
        agent = Agent(
            "ops",
            ScriptedModel([tool_response(("bump", {"counter": "a"}))]),
            tools=[bump],
            guard=Guard(),
            durable=durable,
        )
        result = await agent.run("bump a", run_id="run-f")
        assert result.stop_reason is StopReason.COMPLETED and RAN == ["a"]
        saved = durable.load("run-f")
        assert saved.status == "finished" and len(saved.state["messages"]) == 4
        effect = durable.effect("run-f:1:" + result.messages[1].tool_calls[0].id)
        assert effect is not None and (effect.state, effect.output) == ("done", "a+1")
        with pytest.raises(Exception, match="finished already"):
            await agent.resume("run-f")
        with pytest.raises(UnknownRun, match="no checkpoint"):
            await agent.resume("nope")
        other = Agent("someone-else", ScriptedModel([]), tools=[bump], durable=durable)
        with pytest.raises(Exception, match="belongs to agent 'ops'"):
            await other.resume("run-f")


async def test_resume_needs_a_durable_store() -> None:
    with pytest.raises(Exception, match="durable store"):
        await Agent("ops", ScriptedModel([]), tools=[bump]).resume("run-x")


# -- the same call, asked again after a crash: a new decision, never the earlier approval ------------------


class Crash(BaseException):
    """Stands in for the process dying: nothing in the agent loop catches it."""


WIRED: list[str] = []


@tool(risk="irreversible")
def wire(amount: int) -> str:
    """Wire money (irreversible).

    Args:
        amount: how much.
    """
    WIRED.append(f"wire {amount}")
    if CRASH_AFTER_EFFECT:
        CRASH_AFTER_EFFECT.pop()
        raise Crash
    return f"wired {amount}"


CRASH_AFTER_EFFECT: list[bool] = []


class Person:
    """The approver: records each request in the store and decides it at once, or returns its decision."""

    def __init__(self, approvals: ApprovalStore, *, approve: bool) -> None:
        self.approvals = approvals
        self.approve = approve
        self.asked: list[StoredApproval] = []

    async def __call__(self, request: ApprovalRequest) -> StoredApproval:
        stored = self.approvals.request(request, timeout_s=60)
        self.asked.append(stored)
        if stored.status is not ApprovalStatus.PENDING:
            return stored
        return self.approvals.decide(stored.id, approve=self.approve, by="person")


def wiring_agent(store: TraceStore, person: Person, *, durable: DurableRuns | None = None) -> Agent:
    def answer(request: ModelRequest) -> ModelResponse:
        results = sum(isinstance(b, ToolResultBlock) for m in request.messages for b in m.content)
        # The model reuses its call ids from one turn to the next (some do): the turn tells them apart.
        return tool_response(("wire", {"amount": 10 * (results + 1)}, "call-1")) if results < 2 else text_response("ok")

    return Agent(
        "treasury",
        FunctionModel(answer),
        tools=[wire],
        guard=Guard(approver=person),
        durable=durable or DurableRuns(store),
    )


@pytest.mark.parametrize("approve", [False, True], ids=["review denied", "review approved"])
async def test_an_unknown_outcome_is_a_new_request_never_the_calls_earlier_approval(
    tmp_path: Path, approve: bool
) -> None:
    # The bug: the review had the same (run, call id) as the call's approval, found it approved, and ran.
    WIRED.clear()
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        approvals = ApprovalStore(store)
        first_person = Person(approvals, approve=True)
        CRASH_AFTER_EFFECT[:] = [True]
        with pytest.raises(Crash):
            await wiring_agent(store, first_person).run("wire 10, then 20", run_id="run-w")
        assert WIRED == ["wire 10"]
        [key] = [k for k in _ledger_keys(store)]
        effect = DurableRuns(store).effect(key)
        assert effect is not None and effect.state == "started"

        person = Person(approvals, approve=approve)
        result = await wiring_agent(store, person).resume("run-w")
        review = person.asked[0]
        assert review.id != first_person.asked[0].id  # a new question, not the call's earlier approval
        assert WIRED.count("wire 10") == (2 if approve else 1)
        assert (review.purpose, review.attempt, review.turn) == ("unknown_outcome", 1, 1)
        assert "check wire effect before approving" in str(review.context)
        assert approvals.get(review.id).status is (ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED)
        first_call = result.tool_log[0]
        if approve:
            assert first_call.output == "wired 10" and DurableRuns(store).effect(key).attempt == 2  # type: ignore[union-attr]
        else:
            told = orjson.loads(first_call.output)
            assert told["error"] == "approval_rejected" and "may have run" in told["message"]
        # Turn 2 reuses the call id "call-1": it is a call of its own, with its own first approval.
        assert [(a.turn, a.attempt) for a in person.asked] == [(1, 1), (2, 0)]
        again = ["wire 10", "wire 20"] if approve else []  # this person says no to both
        assert ["wire 10", *again] == WIRED
        assert result.stop_reason is StopReason.COMPLETED


class CrashAfterDone(DurableRuns):
    """Dies right after the ledger's ``done``: before the run's checkpoint after the batch."""

    armed = True

    def mark(self, key: str, state: EffectState, **kwargs: Any) -> None:
        super().mark(key, state, **kwargs)
        if state == "done" and self.armed:
            raise Crash


async def test_a_resume_after_a_crash_between_done_and_the_checkpoint_replays_under_the_same_key(
    tmp_path: Path,
) -> None:
    WIRED.clear()
    CRASH_AFTER_EFFECT.clear()
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        approvals = ApprovalStore(store)
        person = Person(approvals, approve=True)
        durable = CrashAfterDone(store)
        with pytest.raises(Crash):
            await wiring_agent(store, person, durable=durable).run("wire 10, then 20", run_id="run-k")
        assert WIRED == ["wire 10"] and durable.load("run-k").state["turns"] == 1

        durable.armed = False
        result = await wiring_agent(store, person, durable=durable).resume("run-k")
        # Same turn on resume, so the same ledger key: replayed, no new question about turn 1.
        assert result.tool_log[0].output == "wired 10" and result.tool_log[0].decision is None
        assert WIRED == ["wire 10", "wire 20"]
        assert [(a.turn, a.attempt) for a in person.asked] == [(1, 0), (2, 0)]
        assert _ledger_keys(store) == ["run-k:1:call-1", "run-k:2:call-1"]


def _ledger_keys(store: TraceStore) -> list[str]:
    with store.engine.connect() as connection:
        return sorted(connection.scalars(select(tool_ledger.c.idempotency_key)))


def test_a_ledger_attempt_is_claimed_once(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        ledger = DurableRuns(store)
        call = {"run_id": "r", "agent": "a", "tool": "wire", "arguments": {"amount": 1}}
        assert ledger.intend("r:1:c", **call) is True
        assert ledger.intend("r:1:c", **call) is False  # another process got there first: do not run
        ledger.mark("r:1:c", "started", attempt=1)
        # After a person approved the review of attempt 1: attempt 2, claimed once.
        assert ledger.intend("r:1:c", **call, attempt=2) is True
        assert ledger.intend("r:1:c", **call, attempt=2) is False
        ledger.mark("r:1:c", "done", output="late", is_error=False, attempt=1)  # a stale attempt changes nothing
        assert ledger.effect("r:1:c") == Effect(
            "r:1:c", "wire", "intent", None, None, arguments_hash("wire", {"amount": 1}), 2
        )
        ledger.mark("r:1:c", "done", output="ok", is_error=False, attempt=2)
        assert ledger.intend("r:1:c", **call, attempt=3) is False  # a call with an outcome never runs again


def test_approvals_are_one_per_decision(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        approvals = ApprovalStore(store)

        def ask(turn: int, attempt: int) -> StoredApproval:
            return approvals.request(
                ApprovalRequest("r", "a", "wire", "c", {}, "why", {}, turn=turn, attempt=attempt), timeout_s=60
            )

        call = ask(1, 0)
        approvals.decide(call.id, approve=True, by="p")
        assert ask(1, 0).status is ApprovalStatus.APPROVED  # the same decision: the same request
        review = ask(1, 1)
        assert review.id != call.id and review.status is ApprovalStatus.PENDING and review.purpose == "unknown_outcome"
        assert ask(1, 1).id == review.id and ask(1, 2).id not in (call.id, review.id)
        assert ask(2, 0).id != call.id  # the same call id in another turn: another call


def test_migration_6_keeps_older_approvals_and_ledger_rows(store_url: str) -> None:
    engine = create_store_engine(parse_store_url(store_url))
    try:
        migrate(engine, MIGRATIONS[:5])
        now = datetime.now(UTC)
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO approvals (id, run_id, agent, tool, call_id, arguments, reason, context, status,"
                    " created_at, expires_at) VALUES ('a1', 'r', 'a', 'wire', 'c', '{}', 'why', '{}', 'approved',"
                    " :now, :now)"
                ),
                {"now": now},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO tool_ledger (idempotency_key, run_id, agent, tool, arguments_hash, state, updated_at)"
                    " VALUES ('r:1:c', 'r', 'a', 'wire', 'h', 'started', :now)"
                ),
                {"now": now},
            )
        assert migrate(engine)[:1] == [6]  # and whatever came after it
        old = ApprovalStore(engine).get("a1")
        assert (old.turn, old.purpose, old.attempt, old.status) == (0, "call", 0, ApprovalStatus.APPROVED)
        # The agent's requests carry their turn (from 1): an approval from before the upgrade, whose turn is
        # unknown, is never taken for one — the call is asked about again, never run on a guess.
        asked = ApprovalStore(engine).request(
            ApprovalRequest("r", "a", "wire", "c", {}, "why", {}, turn=1), timeout_s=60
        )
        assert asked.id != "a1" and asked.status is ApprovalStatus.PENDING
        effect = DurableRuns(engine).effect("r:1:c")
        assert effect is not None and (effect.state, effect.attempt) == ("started", 1)
    finally:
        engine.dispose()
