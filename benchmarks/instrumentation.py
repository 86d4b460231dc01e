"""Instrumentation overhead: time per traced span versus the same loop untraced.

The same agent (a zero-latency in-memory model, one async tool, 5 tool turns
plus a final answer: 11 spans per run) runs N times with OpenTelemetry's no-op
tracer, then N times traced through a real ``TracerProvider`` with the store
exporter on a ``BatchSpanProcessor`` writing to SQLite (the default set-up).
The difference per span is tether's instrumentation cost: span creation,
attributes, the batch queue. Runs alternate in rounds to cancel drift; the best
round of each is compared (less noise from the other core).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.trace import NoOpTracer

from tether.messages import ModelRequest, ModelResponse
from tether.runtime import Agent, tool
from tether.store import open_store
from tether.testing import FunctionModel, text_response, tool_response
from tether.trace.setup import configure_tracing

TURNS = 5
RUNS_PER_ROUND = 400
ROUNDS = 5
SPANS_PER_RUN = 1 + (TURNS + 1) + TURNS


@tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}: " + "x" * 200


def _script(request: ModelRequest) -> ModelResponse:
    turn = sum(1 for m in request.messages if m.role == "assistant")
    if turn < TURNS:
        return tool_response(("lookup", {"key": f"k{turn}"}))
    return text_response("done")


async def _round(agent: Agent) -> float:
    started = time.perf_counter()
    for _ in range(RUNS_PER_ROUND):
        await agent.run("look up five keys")
    return time.perf_counter() - started


async def _measure(db: Path) -> tuple[float, float, int]:
    store = open_store(f"sqlite:///{db}")
    tracing = configure_tracing(store)
    plain = Agent("bench", FunctionModel(_script), tools=[lookup], tracer=NoOpTracer())
    traced = Agent("bench", FunctionModel(_script), tools=[lookup], tracer=tracing.tracer)
    await _round(plain)  # warm-up
    await _round(traced)
    best_plain, best_traced = float("inf"), float("inf")
    for _ in range(ROUNDS):
        best_plain = min(best_plain, await _round(plain))
        best_traced = min(best_traced, await _round(traced))
    tracing.flush()
    written = sum(len(store.get_run(r.run_id).spans) for r in store.list_runs(limit=3))
    tracing.shutdown()
    store.close()
    return best_plain, best_traced, written


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        plain, traced, sample_spans = asyncio.run(_measure(Path(tmp) / "bench.db"))
    spans = RUNS_PER_ROUND * SPANS_PER_RUN
    added_us = (traced - plain) / spans * 1e6
    step_plain_us = plain / (RUNS_PER_ROUND * (TURNS + 1)) * 1e6
    step_traced_us = traced / (RUNS_PER_ROUND * (TURNS + 1)) * 1e6
    assert sample_spans == 3 * SPANS_PER_RUN, f"expected {3 * SPANS_PER_RUN} spans in 3 stored runs, got {sample_spans}"
    return [
        {
            "benchmark": "instrumentation",
            "metric": "added time per span",
            "value": added_us,
            "unit": "µs",
            "target": "<= 50 µs",
            "ok": added_us <= 50,
            "notes": f"{SPANS_PER_RUN} spans/run, best of {ROUNDS} rounds x {RUNS_PER_ROUND} runs; "
            "BatchSpanProcessor -> SQLite store",
        },
        {
            "benchmark": "instrumentation",
            "metric": "time per step (model call + tool), untraced / traced",
            "value": step_traced_us,
            "unit": "µs",
            "target": "(info)",
            "ok": True,
            "notes": f"untraced {step_plain_us:,.0f} µs per step",
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
