"""The app of the worker fault tests: ``tether worker --app _workers_app:tt`` (or ``:registry``).

Configured by ``tether.toml`` in the working directory (store, Redis, ``[workers]``, the guard) and:

- ``EFFECTS``: the effect file; ``charge`` appends its idempotency key there (fsync'd) — an
  irreversible effect whose every execution the test can count.
- ``MODEL_S``: seconds each model call of ``payer`` takes (spread 50-150 %), so kills land mid-run.
- ``SLEEPY_S``: seconds each model call of ``sleepy`` takes.

Agents: ``payer`` (a read, the irreversible ``charge``, a read, the answer), ``sleepy`` (a slow model
call, ``charge``, the answer), ``quick`` (one answer). ``registry`` holds them and ``poison``, whose
loading raises — as an agent whose factory needs a key the worker's machine lacks.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import tether
from tether.messages import ModelRequest, ModelResponse, ToolResultBlock
from tether.runtime import ToolContext, tool
from tether.runtime.topology import AgentRegistry
from tether.testing import FunctionModel, text_response, tool_response

EFFECTS = Path(os.environ.get("EFFECTS", "effects.txt"))
MODEL_S = float(os.environ.get("MODEL_S", "0.05"))
SLEEPY_S = float(os.environ.get("SLEEPY_S", "2"))


@tool(risk="irreversible")
def charge(order: str, context: ToolContext) -> str:
    """Charge an order (the effect: its idempotency key appended to the effect file, on disk before it returns).

    Args:
        order: the order id.
    """
    with EFFECTS.open("a") as f:
        f.write(f"{context.idempotency_key} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return f"charged {order}"


@tool
def check(order: str) -> str:
    """Check an order.

    Args:
        order: the order id.
    """
    return f"{order} ok"


def _results(request: ModelRequest) -> int:
    return sum(
        1
        for message in request.messages
        if message.role == "user"
        for block in message.content
        if isinstance(block, ToolResultBlock)
    )


async def _pay(request: ModelRequest) -> ModelResponse:
    await asyncio.sleep(MODEL_S * random.uniform(0.5, 1.5))
    order = request.messages[0].text.split()[-1]
    step = _results(request)
    if step == 0:
        return tool_response(("check", {"order": order}, "c-check"))
    if step == 1:
        return tool_response(("charge", {"order": order}, "c-charge"))
    if step == 2:
        return tool_response(("check", {"order": order}, "c-recheck"))
    return text_response(f"paid {order}")


async def _sleepy(request: ModelRequest) -> ModelResponse:
    await asyncio.sleep(SLEEPY_S)
    order = request.messages[0].text.split()[-1]
    if _results(request) == 0:
        return tool_response(("charge", {"order": order}, "c-charge"))
    return text_response(f"charged {order}")


tt = tether.open()
tt.agent("payer", FunctionModel(_pay), tools=[check, charge])
tt.agent("sleepy", FunctionModel(_sleepy), tools=[charge])
tt.agent("quick", FunctionModel(lambda request: text_response("quick")))


class _Registry(AgentRegistry):  # type: ignore[misc]
    """tt's agents, and ``poison``: loading it raises."""

    def get(self, name: str) -> Any:
        if name == "poison":
            raise RuntimeError("cannot build agent poison: POISON_API_KEY is not set\n(more detail here)")
        return super().get(name)


registry = _Registry()
for _name in tt.registry.names():
    registry.register(tt.registry.get(_name))
