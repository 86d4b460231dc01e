"""The app ``tether worker --app _workers_app:tt`` loads in benchmarks/workers.py.

Three agents on the simulated model (priced as claude-sonnet-4-5), all durable, traced into the store:

- ``quick``: one read tool call, then the answer (2 model calls); model latency ``BENCH_LATENCY_MS``;
- ``long``: eight read tool calls, one per turn, then the answer (9 model calls) at ``BENCH_LATENCY_MS``;
- ``slow``: one model call that takes 60 s — what the distributed-kill measurement kills.
"""

from __future__ import annotations

import os

import tether
from tether.models.scenario import PlannedCall, Scenario, SimKnobs, Step, TaskScript
from tether.models.sim import SimModel
from tether.runtime import tool

LATENCY_MS = float(os.environ.get("BENCH_LATENCY_MS", "0"))


@tool
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: what to look up.
    """
    return f"{key}: ok"


def _script(match: str, steps: int, latency_ms: float) -> TaskScript:
    return TaskScript(
        match=match,
        steps=tuple(Step(calls=(PlannedCall(name="lookup", arguments={"key": f"k{i}"}),)) for i in range(steps)),
        final_answer="done",
        knobs=SimKnobs(latency_ms=latency_ms),
    )


def _model(match: str, steps: int, latency_ms: float) -> SimModel:
    return SimModel("claude-sonnet-4-5", scenario=Scenario(scripts=(_script(match, steps, latency_ms),)))


tt = tether.open()
tt.agent("quick", _model("quick", 1, LATENCY_MS), tools=[lookup])
tt.agent("long", _model("long", 8, LATENCY_MS), tools=[lookup])
tt.agent("slow", _model("slow", 1, 60_000.0), tools=[lookup])
