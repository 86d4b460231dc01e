"""Durable runs: a run resumes from its checkpoint in a new process, never repeating a call that happened,
and an outcome the ledger cannot vouch for goes to a person instead of a blind retry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tether.guard.durable import DurableRuns, UnknownRun
from tether.guard.guard import Guard
from tether.messages import StopReason
from tether.runtime import Agent
from tether.runtime.tools import tool
from tether.store import open_store
from tether.testing import ScriptedModel, tool_response

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
