"""The eval engine's own overhead: 10,000 trials of a 3-step case on the simulated model with zero latency.

A suite of 100 cases, each run 100 times (10,000 trials), by ``EvalRunner`` with
32 trials at once, as ``tether eval run`` does it: a fresh environment and agent
per trial, the simulated model re-seeded per trial, every span written to a
SQLite store through tether's tracing, every trial graded (an outcome check on
the environment, an answer check and a trajectory check) and stored as it
finishes. Each case is three model calls (list the alerts, read the logs,
answer) with two tool calls. The model answers at once (latency 0), so what is
measured is tether: the agent loop, the guard, tracing, grading and the store.

Memory: the process's RSS is sampled after every 1,000 trials; "flat" means the
growth from the 2,000th trial to the last stays within a few MiB (the first
thousands warm caches and the allocator).
"""

from __future__ import annotations

import asyncio
import gc
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tether.evals import AgentVersion, Case, EvalRunner, EvalStore, Suite, Trial, contains, outcome, tool_order
from tether.evals.report import summarize
from tether.models.scenario import Scenario
from tether.models.sim import SimModel
from tether.runtime import Agent, tool
from tether.store import open_store
from tether.trace.setup import configure_tracing

CASES: Final = 100
TRIALS: Final = 100
CONCURRENCY: Final = 32
TARGET_S: Final = 30.0
FLAT_MIB: Final = 16.0


@dataclass
class Desk:
    queried: list[str] = field(default_factory=list)


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scenario() -> Scenario:
    return Scenario.from_dict(
        {
            "scripts": [
                {
                    "match": "",
                    "steps": [
                        {"calls": [{"name": "list_alerts", "arguments": {}}]},
                        {"calls": [{"name": "query_logs", "arguments": {"service": "checkout"}}]},
                        {"final": "checkout is out of memory; paged platform"},
                    ],
                }
            ]
        }
    )


SIM = SimModel("claude-haiku-4-5", scenario=_scenario())


def _build(trial: Trial) -> Agent:
    desk: Desk = trial.env

    @tool
    async def list_alerts() -> list[dict[str, str]]:
        """List firing alerts."""
        return [{"alert": "HighErrorRate", "service": "checkout"}]

    @tool
    async def query_logs(service: str) -> str:
        """Search a service's logs.

        Args:
            service: the service.
        """
        desk.queried.append(service)
        return "ERROR OOMKilled container=checkout limit=512Mi"

    return Agent("oncall", SIM, tools=[list_alerts, query_logs])


def _suite() -> Suite:
    return Suite(
        "bench",
        [
            Case(
                f"case-{i:03d}",
                f"checkout alert {i}: investigate",
                [
                    outcome(lambda d: d.queried == ["checkout"], "queried checkout"),
                    contains("out of memory"),
                    tool_order("list_alerts", "query_logs"),
                ],
                setup=Desk,
            )
            for i in range(CASES)
        ],
    )


async def _measure(url: str) -> dict[str, Any]:
    store = open_store(url)
    tracing = configure_tracing(store)
    rss: list[float] = []
    runner = EvalRunner(EvalStore(store), tracer=tracing.tracer)

    def sample(_trial: Any, tally: Any) -> None:
        if tally.done % 1000 == 0:
            rss.append(_rss_mib())

    gc.collect()
    started = time.perf_counter()
    outcome_ = await runner.run(
        _suite(), AgentVersion("bench", _build), trials=TRIALS, k=(1,), max_concurrency=CONCURRENCY, on_trial=sample
    )
    elapsed = time.perf_counter() - started
    tracing.flush()
    summary = summarize(outcome_.record, outcome_.trials)
    tracing.shutdown()
    store.close()
    return {"elapsed": elapsed, "rss": rss, "trials": len(outcome_.trials), "passes": summary.passes}


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(_measure(f"sqlite:///{Path(tmp) / 'evals.db'}"))
    elapsed, rss, trials = figures["elapsed"], figures["rss"], figures["trials"]
    growth = rss[-1] - rss[1] if len(rss) > 2 else float("nan")
    return [
        {
            "benchmark": "evals",
            "metric": f"{trials:,} trials of a 3-step case (sim, latency 0)",
            "value": elapsed,
            "unit": "s",
            "target": f"<= {TARGET_S:g} s",
            "ok": elapsed <= TARGET_S and trials == CASES * TRIALS,
            "notes": f"{trials / elapsed:,.0f} trials/s; {CASES} cases x {TRIALS} trials, {CONCURRENCY} at once, "
            f"3 model calls + 2 tool calls each, spans and trials stored in SQLite; {figures['passes']:,} passed",
        },
        {
            "benchmark": "evals",
            "metric": "RSS growth from trial 2,000 to the last",
            "value": growth,
            "unit": "MiB",
            "target": f"<= {FLAT_MIB:g} MiB (flat)",
            "ok": growth <= FLAT_MIB,
            "notes": "RSS every 1,000 trials: " + ", ".join(f"{v:,.0f}" for v in rss) + " MiB",
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
