"""The child process of the exactly-once fault test: one agent run (or resume) with one irreversible call.

Usage: ``python _exactly_once_agent.py run|resume RUN_ID`` with ``TETHER_DATABASE_URL`` (the store),
``EFFECTS`` (the effect file: one line per execution of the tool) and ``CRASH_AT`` (where this
process dies, or nothing):

- ``after_approval``: SIGKILL once the approval came back approved, before the ledger's intent.
- ``during_effect``: the tool writes the ``IN_EFFECT`` marker file and blocks; the test kills it from outside.
- ``after_effect``: SIGKILL right after the effect is on disk (fsync), before the ledger's ``done``.
- ``after_done``: SIGKILL right after the ledger's ``done``, before the run's checkpoint.

A crash "while the approval is pending" needs no injection: the test kills the process once the
pending request is in the store. The person is the test, deciding through ``ApprovalStore``. On exit
the process prints one JSON line: the run's stop reason, the tool's answer to the model, and the output.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tether.guard.approvals import ApprovalStore
from tether.guard.durable import DurableRuns
from tether.guard.guard import Guard
from tether.messages import ModelRequest, ModelResponse
from tether.runtime import Agent
from tether.runtime.tools import tool
from tether.store import open_store
from tether.testing import FunctionModel, text_response, tool_response

CRASH_AT = os.environ.get("CRASH_AT", "")
EFFECTS = Path(os.environ["EFFECTS"])


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@tool(risk="irreversible")
def refund(order: str, amount: int) -> str:
    """Refund an order (the effect: one line in the effect file, on disk before it returns).

    Args:
        order: the order id.
        amount: how much.
    """
    if CRASH_AT == "during_effect":
        (EFFECTS.parent / "IN_EFFECT").write_text(str(os.getpid()))
        time.sleep(120)  # the test kills this process while it is here
    with EFFECTS.open("a") as f:
        f.write(f"refund {order} {amount} pid={os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    if CRASH_AT == "after_effect":
        die()
    return f"refunded {amount} on {order}"


class CrashingLedger(DurableRuns):
    """The ledger, dying at the step ``CRASH_AT`` names."""

    def intend(self, *args: Any, **kwargs: Any) -> Any:
        if CRASH_AT == "after_approval":
            die()
        return super().intend(*args, **kwargs)

    def mark(self, *args: Any, **kwargs: Any) -> Any:
        done = super().mark(*args, **kwargs)
        state = args[1] if len(args) > 1 else kwargs.get("state")
        if CRASH_AT == "after_done" and state == "done":
            die()
        return done


def answer(request: ModelRequest) -> ModelResponse:
    # One refund, then (with its result in the transcript) a final answer.
    if request.messages[-1].role == "user" and any(b.type == "tool_result" for b in request.messages[-1].content):
        return text_response("finished")
    return tool_response(("refund", {"order": "A-1", "amount": 30}, "call-refund"))


async def main(mode: str, run_id: str) -> None:
    with open_store(os.environ["TETHER_DATABASE_URL"]) as store:
        approvals = ApprovalStore(store)
        agent = Agent(
            "payments",
            FunctionModel(answer),
            tools=[refund],
            guard=Guard(approver=approvals.approver(timeout_s=120, poll_s=0.05)),
            durable=CrashingLedger(store),
        )
        result = await (agent.run("refund order A-1", run_id=run_id) if mode == "run" else agent.resume(run_id))
        told = [r.output for r in result.tool_log]
        print(orjson.dumps({"stop": result.stop_reason.value, "told": told, "output": result.output}).decode())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
