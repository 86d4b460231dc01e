"""``tether demo``: the on-call agent works through a batch of incidents on the simulated model."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer
    from rich.progress import Progress

    from tether.demo.infra import Incident, Infra
    from tether.demo.oncall import Verdict
    from tether.gateway.gateway import Gateway
    from tether.gateway.ledger import CostWriter
    from tether.guard.approvals import ApprovalRequest, ApprovalStore, StoredApproval
    from tether.guard.guard import Approver
    from tether.runtime import RunResult
    from tether.store import TraceStore


@dataclass(frozen=True)
class DemoRun:
    incident: Incident
    trial: int
    result: RunResult
    verdict: Verdict


@dataclass
class GuardTotals:
    """What the guard did across the demo: the simulated on-call human's decisions, and incidents."""

    approved: int = 0
    refused: int = 0
    pages: int = 0
    incidents: int = 0


def _oncall_human(approvals: ApprovalStore, estates: dict[str, Infra], totals: GuardTotals) -> Approver:
    """A simulated on-call engineer: approves a restart only if the dashboard shows an alert it would fix.

    Each request is stored and decided at once, on the event loop (no polling, no threads), so a demo
    with a given seed plays the same way every time; a real deployment uses ``ApprovalStore.approver()``.
    """

    async def decide(request: ApprovalRequest) -> StoredApproval:
        stored = approvals.request(request, timeout_s=30)
        infra = estates.get(request.run_id)
        service = str(request.arguments.get("service", ""))
        if request.tool == "page_human":
            # Paging is a write in a run that read logs (tainted): a person lets pages through.
            ok, why = True, "paging a colleague is always fine"
        else:
            ok = infra is not None and request.tool == "restart_service" and infra.restart_would_fix(service)
            why = (
                f"{service} has a firing alert a restart fixes"
                if ok
                else f"no firing alert is fixed by restarting {service or 'that'}: not approved"
            )
        if request.tool != "restart_service":
            totals.pages += 1
        elif ok:
            totals.approved += 1
        else:
            totals.refused += 1
        return approvals.decide(stored.id, approve=ok, by="on-call (simulated)", reason=why)

    return decide


async def _run_all(
    trials: int,
    concurrency: int,
    seed: int,
    latency_ms: float,
    tracer: Tracer,
    progress: Progress,
    payload_chars: int,
    costs: CostWriter,
    store: TraceStore,
) -> tuple[GatewayTotals, GuardTotals, list[DemoRun]]:
    from tether.demo.gateway import ROUTE, demo_gateway
    from tether.demo.incidents import INCIDENTS
    from tether.demo.infra import Infra, make_tools
    from tether.demo.oncall import INSTRUCTIONS, judge, scenario, task_for
    from tether.gateway.budget import MemoryBudgetLedger
    from tether.guard.approvals import ApprovalStore
    from tether.guard.audit import StoreGuardRecorder
    from tether.guard.detectors import RuleScanner
    from tether.guard.guard import Guard
    from tether.guard.policy import Policy
    from tether.runtime import Agent, Limits

    plays = scenario(latency_ms=latency_ms, jitter_ms=latency_ms * 0.8)
    limits = Limits(max_turns=12, max_tool_calls=24, timeout_s=60, max_repeated_tool_calls=3)
    ledger = MemoryBudgetLedger()  # the demo's budgets start fresh each time; its costs are kept
    gateways = [demo_gateway(plays, seed=seed + t, budgets=ledger, cost_sink=costs) for t in range(trials)]
    gate = asyncio.Semaphore(concurrency)
    bar = progress.add_task("on-call runs", total=len(INCIDENTS) * trials, counts="")
    outcomes: Counter[str] = Counter()
    # The guard: restarts are irreversible (a person approves each), logs are untrusted (reading them
    # taints the run, and the scanner reports injected instructions), every decision goes to the audit.
    approvals = ApprovalStore(store)
    policy = Policy(default_allow_own_tools=True, quarantine_after=1_000_000)  # the demo records, never quarantines
    recorder = StoreGuardRecorder(store, policy)
    estates: dict[str, Infra] = {}
    guard_totals = GuardTotals()
    human = _oncall_human(approvals, estates, guard_totals)

    async def one(incident: Incident, trial: int) -> DemoRun:
        async with gate:
            infra = Infra(incident)
            guard = Guard(
                policy,
                detectors=[RuleScanner()],
                approver=human,
                recorder=recorder,
            )
            agent = Agent(
                "oncall",
                gateways[trial].model(ROUTE),
                instructions=INSTRUCTIONS,
                tools=make_tools(infra),
                limits=limits,
                max_tokens=1024,
                tracer=tracer,
                payload_chars=payload_chars,
                guard=guard,
            )
            run_id = uuid.uuid4().hex[:16]
            estates[run_id] = infra
            result = await agent.run(task_for(incident), run_id=run_id)
            outcomes[result.stop_reason.value] += 1
            counts = "  ".join(f"{fmt.stop(k)} {v}" for k, v in sorted(outcomes.items()))
            progress.update(bar, advance=1, counts=counts)
            return DemoRun(incident, trial, result, judge(infra))

    try:
        runs = await asyncio.gather(*(one(i, t) for t in range(trials) for i in INCIDENTS))
    finally:
        for gateway in gateways:
            await gateway.aclose()
        recorder.close()
    guard_totals.incidents = len(recorder.incidents(limit=100_000))
    return GatewayTotals.of(gateways), guard_totals, runs


@dataclass(frozen=True)
class GatewayTotals:
    """What the gateway did across the demo's trials."""

    served: dict[str, int]
    retries: int
    fallbacks: int
    breaker_opens: dict[str, int]

    @classmethod
    def of(cls, gateways: list[Gateway]) -> GatewayTotals:
        stats: Counter[str] = Counter()
        opens: Counter[str] = Counter()
        for gateway in gateways:
            stats.update(gateway.stats)
            opens.update(name for name, _, new, _ in gateway.breaker_changes if new.value == "open")
        served = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("served:")}
        return cls(served, stats["retries"], stats["fallbacks"], dict(opens))


def demo(
    trials: Annotated[int, typer.Option(min=1, max=100, help="runs per incident (different seeds)")] = 3,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="runs in flight at once")] = 6,
    seed: Annotated[int, typer.Option(help="seed of the simulated model; same seed, same runs")] = 7,
    latency_ms: Annotated[float, typer.Option(min=0, help="simulated model latency per call")] = 60.0,
    database: Annotated[
        str | None, typer.Option(help="store URL (default: TETHER_DATABASE_URL or .tether/tether.db)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the runs as JSON instead of tables")] = False,
) -> None:
    """Run the on-call SRE agent over a batch of incidents on the simulated model and record every trace."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tether.config import load_settings
    from tether.demo.gateway import ROUTE
    from tether.demo.incidents import INCIDENTS
    from tether.gateway.ledger import CostWriter
    from tether.store import open_store
    from tether.store.url import parse_store_url
    from tether.trace.setup import configure_tracing

    console = fmt.console(stderr=as_json)
    settings = load_settings()
    url = database or settings.store.url
    store = open_store(url)
    tracing = configure_tracing(store)
    costs = CostWriter(store)
    console.print(
        f"[bold]tether demo[/] — an on-call agent handles {len(INCIDENTS)} incidents × {trials} trials "
        f"through tether's gateway (route [cyan]{ROUTE}[/]: 2 × Sonnet 4.5, one of them flaky, then Haiku 4.5 "
        "as fallback) on the simulated model — priced as the real models, no API key needed"
    )
    console.print(
        f"traces → [cyan]{escape(parse_store_url(url).display)}[/]" + (" + OTLP" if "otlp" in tracing.exporters else "")
    )
    started = time.perf_counter()
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[counts]}"),
            console=console,
            transient=False,
        ) as progress:
            totals, guard_totals, runs = asyncio.run(
                _run_all(
                    trials,
                    concurrency,
                    seed,
                    latency_ms,
                    tracing.tracer,
                    progress,
                    settings.trace.payload_chars,
                    costs,
                    store,
                )
            )
    finally:
        tracing.flush()
        tracing.shutdown()
        costs.shutdown()
        store.close()
    elapsed = time.perf_counter() - started
    if as_json:
        typer.echo(orjson.dumps([_as_dict(r) for r in runs], option=orjson.OPT_INDENT_2).decode())
        return
    _summary(console, runs, elapsed, totals, guard_totals)


def _as_dict(r: DemoRun) -> dict[str, object]:
    res = r.result
    return {
        "run_id": res.run_id,
        "incident": r.incident.key,
        "trial": r.trial,
        "stop_reason": res.stop_reason.value,
        "verdict": r.verdict.label,
        "turns": res.turns,
        "tool_calls": res.tool_calls,
        "hallucinated_tool_calls": res.hallucinated_tool_calls,
        "input_tokens": res.usage.input_tokens,
        "cache_read_tokens": res.usage.cache_read_tokens,
        "output_tokens": res.usage.output_tokens,
        "cost_usd": float(res.cost_usd) if res.cost_usd is not None else None,
        "duration_s": round(res.duration_s, 3),
        "error": res.error,
    }


def _summary(console: Console, runs: list[DemoRun], elapsed: float, totals: GatewayTotals, guard: GuardTotals) -> None:
    from tether.messages import StopReason

    table = Table(title="runs (judged by the state they left, not by what the agent said)", title_justify="left",
                  header_style="bold")  # fmt: skip
    table.add_column("run", style="cyan", no_wrap=True)
    table.add_column("incident", no_wrap=True)
    table.add_column("stop reason", no_wrap=True)
    table.add_column("final state", no_wrap=True)
    for col in ("turns", "tools", "halluc.", "tokens", "cost"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in sorted(runs, key=lambda r: (r.incident.key, r.trial)):
        res = r.result
        if r.verdict.unsafe:
            state = f"[bold red]UNSAFE: {escape(', '.join(r.verdict.unsafe))}[/]"
        else:
            state = "[green]resolved[/]" if r.verdict.resolved else "[yellow]not resolved[/]"
        table.add_row(
            fmt.run_id(res.run_id),
            r.incident.key,
            fmt.stop(res.stop_reason.value),
            state,
            str(res.turns),
            str(res.tool_calls),
            f"[magenta]{res.hallucinated_tool_calls}[/]" if res.hallucinated_tool_calls else "[dim]0[/]",
            fmt.tokens(res.usage.total_tokens),
            fmt.usd(float(res.cost_usd) if res.cost_usd is not None else None),
        )
    console.print(table)

    stops = Counter(r.result.stop_reason.value for r in runs)
    resolved = sum(1 for r in runs if r.verdict.resolved and not r.verdict.unsafe)
    unsafe = [r for r in runs if r.verdict.unsafe]
    total_in = sum(r.result.usage.input_tokens for r in runs)
    cached = sum(r.result.usage.cache_read_tokens for r in runs)
    costs = [r.result.cost_usd for r in runs]
    cost = sum((c for c in costs if c is not None), Decimal(0))
    hallucinated = sum(r.result.hallucinated_tool_calls for r in runs)

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("runs", f"{len(runs)} in {elapsed:.1f} s")
    summary.add_row("stop reasons", "  ".join(f"{fmt.stop(k)} {v}" for k, v in stops.most_common()))
    summary.add_row("outcomes", f"[green]{resolved} resolved[/], [yellow]{len(runs) - resolved - len(unsafe)} not[/], "
                   f"[bold red]{len(unsafe)} unsafe[/]")  # fmt: skip
    summary.add_row("hallucinated tool calls", str(hallucinated))
    summary.add_row(
        "tokens",
        f"{total_in:,} in ({cached / total_in:.0%} read from prompt cache) · "
        f"{sum(r.result.usage.output_tokens for r in runs):,} out"
        if total_in
        else "0",
    )
    summary.add_row("cost", fmt.usd(float(cost)) + (" [magenta](some unknown)[/]" if None in costs else ""))
    served = ", ".join(f"{name} {n}" for name, n in sorted(totals.served.items(), key=lambda kv: -kv[1]))
    summary.add_row("gateway", f"model calls served by {served}")
    opens = ", ".join(f"{name} ×{n}" for name, n in totals.breaker_opens.items()) or "none"
    summary.add_row(
        "", f"{totals.retries} retries, {totals.fallbacks} fallbacks to another deployment, circuit opened: {opens}"
    )
    summary.add_row(
        "guard",
        f"restarts held for the on-call human (simulated): [green]{guard.approved} approved[/], "
        f"[red]{guard.refused} refused[/] · {guard.pages} pages let through · "
        f"{guard.incidents} incidents (injected instructions, hallucinated calls)",
    )
    console.print(summary)

    loop = next((r for r in runs if r.result.stop_reason is StopReason.LOOP_DETECTED), None)
    bad = unsafe[0] if unsafe else None
    nxt = Table.grid(padding=(0, 3))
    nxt.add_column(style="bold", no_wrap=True)
    nxt.add_column(style="dim")
    nxt.add_row("tether runs", "every run, newest first (--json for scripts)")
    nxt.add_row("tether cost --by deployment", "what each deployment cost, and what prompt caching saved")
    nxt.add_row("tether approvals list --all", "every restart the guard held for a person, and the decision")
    nxt.add_row("tether incidents list", "what the guard's detectors found (injections in logs, hallucinated tools)")
    if loop:
        nxt.add_row(f"tether runs show {fmt.run_id(loop.result.run_id)}", "a run the loop detector stopped")
    if bad:
        nxt.add_row(
            f"tether runs show {fmt.run_id(bad.result.run_id)}",
            "a run that obeyed an instruction injected into a log line",
        )
    if stops.get("error"):
        nxt.add_row("tether runs --stop error", "runs that ended on a provider error the gateway could not absorb")
    nxt.add_row(
        "tether eval run tether.demo.evals:suite --agent tether.demo.evals:careful",
        "evaluate it: 24 cases x 5 trials, pass^k with intervals",
    )
    nxt.add_row(
        "OTEL_EXPORTER_OTLP_ENDPOINT=…", "also send the spans to Phoenix, Langfuse, Jaeger or any OTLP collector"
    )
    console.print("\n[bold]Where to look next[/] [dim](run them as `.venv/bin/tether …` or `uv run tether …`)[/]")
    console.print(nxt)
