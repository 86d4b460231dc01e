"""``tether eval``: run a suite against an agent version, then read, compare, gate and watch the results."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt
from tether.errors import ConfigError, UserError

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.compare import Comparison, GateResult
    from tether.evals.drift import DriftReport
    from tether.evals.report import EvalSummary
    from tether.evals.results import EvalRecord, EvalStore, TrialRecord
    from tether.evals.runner import EvalOutcome, EvalProgress
    from tether.evals.scorecard import Scorecard
    from tether.evals.stats import Interval, PairedDifference
    from tether.gateway.gateway import Gateway
    from tether.models.base import Model

app = typer.Typer(
    help="Evals: run suites k times per case, then show, compare, gate, scorecard and drift.", no_args_is_help=True
)

DatabaseOption = Annotated[
    str | None, typer.Option(help="store URL (default: TETHER_DATABASE_URL or .tether/tether.db)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts (progress and notes go to stderr)")]
KOption = Annotated[
    str | None, typer.Option("--k", metavar="K,...", help="k values for pass@k and pass^k, comma-separated, e.g. 1,3")
]
AlphaOption = Annotated[float, typer.Option(min=0.0001, max=0.5, help="significance level of the paired tests")]
FloorOption = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="the gate also fails when the candidate's pass rate is below this"),
]
MarkdownOption = Annotated[
    Path | None, typer.Option(metavar="PATH", help="also write the report as Markdown (e.g. for a PR comment)")
]
JunitOption = Annotated[
    Path | None, typer.Option(metavar="PATH", help="also write JUnit XML for CI (one test per trial)")
]

DEFAULT_TRIALS = 5
_STATUS_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "over_budget": "magenta"}


# --- parsing ------------------------------------------------------------------------------------------------------


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"--k {text!r} is not a list of whole numbers: write e.g. --k 1,3") from None
    if not values:
        raise ConfigError("--k is empty: write e.g. --k 1,3")
    return values


def _parse_budget(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise ConfigError(f"--budget {text!r} is not an amount of dollars: write e.g. --budget 2.50") from None
    if not value.is_finite() or value <= 0:
        raise ConfigError(f"--budget must be a positive number of dollars, got {text}")
    return value


def _importable_working_directory() -> None:
    """Let SUITE and --agent name modules of the project in the working directory, as ``python -m`` would."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


# --- formatting ---------------------------------------------------------------------------------------------------


def _rate_style(value: float | None) -> str:
    if value is None:
        return "dim"
    return "green" if value >= 0.9 else "yellow" if value >= 0.6 else "red"


def _rate(value: Interval | None) -> str:
    """A rate with its interval, coloured by how good it is."""
    from tether.evals import export

    if value is None:
        return "[dim]n/a[/]"
    return (
        f"[{_rate_style(value.estimate)}]{export.percent(value.estimate)}[/] "
        f"[dim]({value.low * 100:.1f}-{value.high * 100:.1f}%)[/]"
    )


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


def _usd(value: Decimal | None) -> str:
    return fmt.usd(None if value is None else float(value))


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else fmt.duration(value)


def _difference(value: PairedDifference) -> str:
    from tether.evals import export

    colour = "red" if value.high < 0 else "green" if value.low > 0 else "white"
    return f"[{colour}]{escape(export.difference_text(value))}[/]"


def _p(value: float | None, alpha: float) -> str:
    from tether.evals import export

    text = export.p_text(value)
    return f"[bold]{text}[/]" if value is not None and value < alpha else text


def _write(console: Console, path: Path, text: str, what: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    console.print(f"[dim]{what} written to[/] {escape(str(path))}")


# --- one eval's summary -------------------------------------------------------------------------------------------


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print_summary(console: Console, summary: EvalSummary, *, cases: int | None = None) -> None:
    """The headline figures of one eval, then one row per case (``cases``: how many the suite has, when known)."""
    from tether.evals import export

    record = summary.record
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("eval", f"[cyan]{record.eval_id}[/]  {_status(record.status)}")
    grid.add_row("suite", f"{escape(record.suite)}  [dim]fingerprint {record.suite_fingerprint}[/]")
    grid.add_row("agent version", escape(record.agent_version))
    infra = (
        f"  [yellow]{_plural(summary.infra_errors, 'infra error')} (not counted)[/]"
        if summary.infra_errors
        else "  [dim]0 infra errors[/]"
    )
    n_cases = cases if cases is not None else len(summary.cases)
    stored = summary.trials + summary.infra_errors
    planned = n_cases * record.trials
    shape = f"{_plural(n_cases, 'case')} x {_plural(record.trials, 'trial')}"
    if stored < planned:
        shape = f"{stored} of {planned} planned: " + shape
    grid.add_row("trials", f"{summary.trials} counted  [dim]({shape})[/]{infra}")
    grid.add_row("pass rate", _rate(summary.pass_rate) + f"  [dim]{summary.passes}/{summary.trials} trials passed[/]")
    for k in summary.ks:
        short = summary.short_cases.get(k, 0)
        note = f"  [yellow]{short} case(s) with fewer than {k} counted trials left out[/]" if short else ""
        grid.add_row(f"pass@{k} / pass^{k}", f"{_rate(summary.pass_at_k[k])}  /  {_rate(summary.pass_hat_k[k])}{note}")
    grid.add_row("mean score", _rate(summary.mean_score))
    flaky = summary.flaky
    grid.add_row(
        "flaky cases",
        f"[yellow]{len(flaky)}[/]: " + escape(", ".join(c.case_id for c in flaky)) if flaky else "[green]none[/]",
    )
    per_trial = f"  [dim]{_usd(summary.cost_per_trial_usd)} per trial[/]" if summary.cost_usd is not None else ""
    grid.add_row("cost", _usd(summary.cost_usd) + per_trial)
    grid.add_row("duration", f"p50 {_seconds(summary.duration_p50_s)} · p95 {_seconds(summary.duration_p95_s)}")
    if summary.judge_sd is not None:
        grid.add_row("judge spread", f"{summary.judge_sd:.3f} [dim](mean sd of repeated judge grades)[/]")
    if summary.models:
        grid.add_row("models", escape(", ".join(summary.models)))
    console.print(grid)

    top = max(summary.ks, default=1)
    table = Table(title="cases", title_justify="left", header_style="bold")
    table.add_column("case", style="cyan", no_wrap=True)
    table.add_column("pass", justify="right", no_wrap=True)
    table.add_column(f"pass^{top}", justify="right", no_wrap=True)
    table.add_column("flaky", justify="center", no_wrap=True)
    table.add_column("infra", justify="right", no_wrap=True)
    table.add_column("failing checks", overflow="fold")
    table.add_column("cost", justify="right", no_wrap=True)
    for case in summary.cases:
        rate = case.pass_rate
        hat = case.pass_hat_k.get(top)
        table.add_row(
            escape(case.case_id),
            f"[{_rate_style(rate)}]{case.passes}/{case.trials}[/]",
            f"[{_rate_style(hat)}]{export.percent(hat)}[/]",
            "[yellow]~[/]" if case.flaky else "",
            f"[yellow]{case.infra_errors}[/]" if case.infra_errors else "[dim]0[/]",
            f"[red]{escape(export.failing_checks_text(case.failing_checks))}[/]" if case.failing_checks else "",
            _usd(case.cost_usd),
        )
    console.print(table)


def _print_trials(console: Console, trials: Sequence[TrialRecord]) -> None:
    from tether.evals import export

    table = Table(title=f"{len(trials)} trials", title_justify="left", header_style="bold")
    table.add_column("case", style="cyan", no_wrap=True)
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("stop reason", no_wrap=True)
    table.add_column("run", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("why it did not pass", overflow="fold")
    styles = {"passed": "green", "failed": "red", "infra_error": "yellow"}
    for t in trials:
        table.add_row(
            escape(t.case_id),
            str(t.trial),
            f"[{styles[t.status]}]{t.status}[/]",
            "" if t.score is None else f"{t.score:.2f}",
            fmt.stop(t.stop_reason) if t.stop_reason else "[dim]-[/]",
            escape(t.run_id or "-"),
            _usd(None if t.cost_usd is None else t.cost_usd + t.judge_cost_usd),
            "" if t.passed else escape(export.first_failure(t)),
        )
    console.print(table)


def _print_next(
    console: Console, record: EvalRecord, trials: Sequence[TrialRecord], other: str | None, *, listed: bool = False
) -> None:
    """Where to look next: the trials (unless ``listed`` already), a failing trial's trace, a comparison."""
    nxt = Table.grid(padding=(0, 3))
    nxt.add_column(style="bold", no_wrap=True)
    nxt.add_column(style="dim")
    if not listed:
        nxt.add_row(f"tether eval show {record.eval_id} --trials", "every trial: status, score, run, why it failed")
    failing = next((t for t in trials if t.status == "failed" and t.run_id), None)
    traced = failing or next((t for t in trials if t.run_id), None)
    if traced is not None:
        what = "a failing trial" if traced is failing else "a trial"
        nxt.add_row(f"tether runs show {traced.run_id}", f"the trace of {what} ({traced.case_id} #{traced.trial})")
    nxt.add_row(
        f"tether eval compare {other or 'OTHER_ID'} {record.eval_id}",
        "paired comparison with another eval of this suite" + ("" if other else " (tether eval list)"),
    )
    console.print("\n[bold]Next[/]")
    console.print(nxt)


def _other_eval(evals: EvalStore, record: EvalRecord) -> str | None:
    """The newest other eval of the same suite, to suggest comparing with."""
    for candidate in evals.list(suite=record.suite, limit=10):
        if candidate.eval_id != record.eval_id:
            return candidate.eval_id
    return None


@contextlib.contextmanager
def _evals(database: str | None) -> Iterator[EvalStore]:
    """The evals of the store at ``database`` (the configured one when None), for one command."""
    from tether.evals.results import EvalStore
    from tether.store import open_store

    store = open_store(database)
    try:
        yield EvalStore(store)
    finally:
        store.close()


# --- tether eval run ----------------------------------------------------------------------------------------------


async def _closing(run: Coroutine[Any, Any, EvalOutcome], gateway: Gateway | None) -> EvalOutcome:
    """Run the eval, then close the judge's gateway on the same event loop."""
    try:
        return await run
    finally:
        if gateway is not None:
            await gateway.aclose()


if TYPE_CHECKING:
    StartFn = Callable[[EvalRecord, int], None]
    TrialFn = Callable[[TrialRecord, EvalProgress], None]


@dataclass
class _Seen:
    """What the progress callbacks saw, for what is printed after the run (or after Ctrl-C)."""

    record: EvalRecord | None = None
    planned: int = 0
    done: int = 0


def _counts(tally: EvalProgress) -> str:
    return (
        f"[green]✓ {tally.passed}[/] [red]✗ {tally.failed}[/] [yellow]! {tally.infra}[/] "
        f"[dim]${float(tally.spent):.4f}[/]"
    )


def _with_progress(
    console: Console, seen: _Seen, start: Callable[[StartFn, TrialFn], Coroutine[Any, Any, EvalOutcome]]
) -> EvalOutcome:
    """Run the eval ``start`` builds, with a progress bar fed by its callbacks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[counts]}"),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("trials", total=None, counts="")

        def on_start(record: EvalRecord, todo: int) -> None:
            seen.record, seen.planned = record, todo
            progress.update(bar, total=todo, description=f"eval {record.eval_id}")

        def on_trial(_trial: TrialRecord, tally: EvalProgress) -> None:
            seen.done = tally.done
            progress.update(bar, completed=tally.done, counts=_counts(tally))

        return asyncio.run(start(on_start, on_trial))


def _resume_command(suite_ref: str, agent_ref: str, eval_id: str, database: str | None, *extra: str) -> str:
    words = ["tether", "eval", "run", suite_ref, "--agent", agent_ref, "--resume", eval_id, *extra]
    if database is not None:
        words += ["--database", database]
    return shlex.join(words)


def _print_not_run(console: Console, outcome: EvalOutcome, budget: Decimal | None, resume: Callable[..., str]) -> None:
    """Say how many trials the budget left unrun, and the command that runs them."""
    trials = _plural(outcome.not_run, "trial")
    if outcome.spent_usd is None:
        # The runner stops a budgeted eval as soon as a trial's cost is unknown: the budget cannot be kept.
        console.print(
            f"[bold yellow]{trials} not run: a trial's cost is unknown, so the budget cannot be kept.[/] "
            f"Give the model a price ({escape('[prices.MODEL]')} in tether.toml) or drop --budget, then resume: "
            f"[bold]{escape(resume())}[/]",
            soft_wrap=True,
        )
        return
    higher = f"{(budget * 2).normalize():f}" if budget is not None else "MORE"
    console.print(
        f"[bold yellow]{trials} not run: the budget of ${budget} is spent (${outcome.spent_usd:.4f} spent).[/] "
        f"Resume with a higher budget (it counts what was spent): [bold]{escape(resume('--budget', higher))}[/]",
        soft_wrap=True,
    )


@app.command("run")
def run(
    suite_ref: Annotated[
        str, typer.Argument(metavar="SUITE", help="a YAML suite file, or module:attribute of a Suite")
    ],
    agent_ref: Annotated[
        str,
        typer.Option("--agent", metavar="REF", help="the version to evaluate: module:attribute of an AgentVersion"),
    ],
    trials: Annotated[
        int | None,
        typer.Option(
            min=1, max=10_000, help=f"trials per case (default {DEFAULT_TRIALS}; with --resume, the eval's own)"
        ),
    ] = None,
    k: KOption = None,
    max_concurrency: Annotated[int, typer.Option(min=1, max=4096, help="trials in flight at once")] = 8,
    budget: Annotated[
        str | None, typer.Option(metavar="USD", help="start no trial once the eval has spent this many dollars")
    ] = None,
    seed: Annotated[int, typer.Option(help="the eval's seed; every trial's own seed derives from it")] = 0,
    resume: Annotated[
        str | None,
        typer.Option(metavar="EVAL_ID", help="run only the trials this eval is missing (or lost to infra errors)"),
    ] = None,
    gate_on: Annotated[
        str | None,
        typer.Option(
            "--gate", metavar="BASELINE_EVAL", help="then compare with this eval: exit 1 on a significant regression"
        ),
    ] = None,
    floor: FloorOption = None,
    alpha: AlphaOption = 0.05,
    record: Annotated[
        Path | None, typer.Option(metavar="PATH", help="record every model call to this cassette")
    ] = None,
    replay: Annotated[
        Path | None, typer.Option(metavar="PATH", help="answer every model call from this cassette (no provider)")
    ] = None,
    judge_model: Annotated[
        str | None,
        typer.Option(
            metavar="REF",
            help="model for judge checks: provider:model (e.g. anthropic:claude-haiku-4-5) or route:NAME "
            "(a gateway route of tether.toml)",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", min=0.001, help="harness limit per trial; past it, an infra error")
    ] = 600.0,
    as_json: JsonOption = False,
    junit: JunitOption = None,
    markdown: MarkdownOption = None,
    database: DatabaseOption = None,
) -> None:
    """Run every case of SUITE --trials times against an agent version, store each trial, and summarize.

    Exit codes: 0 done (also when the budget stopped it early), 1 the --gate failed,
    2 bad input (nothing ran), 130 interrupted (resume with --resume EVAL_ID).
    """
    from tether.config import load_settings
    from tether.evals import export
    from tether.evals.compare import compare, gate
    from tether.evals.report import summarize
    from tether.evals.results import EvalStore
    from tether.evals.runner import EvalRunner, load_agent
    from tether.evals.suite import load_suite
    from tether.gateway.gateway import Gateway
    from tether.models import resolve_model
    from tether.models.replay import Cassette
    from tether.store import open_store
    from tether.store.url import parse_store_url
    from tether.trace.setup import configure_tracing

    ks = _parse_ks(k) if k is not None else None
    budget_usd = _parse_budget(budget)
    if record is not None and replay is not None:
        raise ConfigError("--record and --replay exclude each other: record a cassette once, then replay it")
    _importable_working_directory()
    suite = load_suite(suite_ref)
    version = load_agent(agent_ref)
    url = database or load_settings().store.url
    console = fmt.console(stderr=as_json)
    store = open_store(url)
    gateway: Gateway | None = None
    try:
        judge: Model | None = None
        if judge_model is not None and judge_model.startswith("route:"):
            # The judge through the gateway: its routing, retries, fallbacks and budgets apply to it too.
            gateway = Gateway.from_config(load_settings(), store=store)
            judge = gateway.model(judge_model.removeprefix("route:"))
        elif judge_model is not None:
            judge = resolve_model(judge_model)
        evals = EvalStore(store)
        prior = evals.get(resume) if resume is not None else None
        if prior is not None and (prior.suite != suite.name or prior.agent_version != version.name):
            raise UserError(
                f"eval {prior.eval_id} ran suite {prior.suite!r} on {prior.agent_version!r}; "
                f"it cannot be resumed with {suite.name!r} on {version.name!r}"
            )
        baseline = evals.get(gate_on) if gate_on is not None else None
        if baseline is not None and baseline.suite != suite.name:
            raise UserError(
                f"--gate {gate_on}: eval {baseline.eval_id} ran suite {baseline.suite!r}, not {suite.name!r}: "
                "gate against an eval of the same suite (tether eval list --suite NAME)"
            )
        n_trials = trials or (prior.trials if prior is not None else DEFAULT_TRIALS)
        chosen = ks or (tuple(int(v) for v in prior.config.get("k") or (1,)) if prior is not None else (1,))
        runner = EvalRunner(
            evals,
            cassette=Cassette(replay, "replay") if replay is not None else None,
            judge_model=judge,
            trial_timeout_s=timeout,
        )
        runner.plan(suite, trials=n_trials, k=chosen, budget_usd=budget_usd)
        if record is not None:
            runner.cassette = Cassette(record, "record")

        tracing = configure_tracing(store)
        runner.tracer = tracing.tracer
        what = f"resuming eval [cyan]{prior.eval_id}[/]: " if prior is not None else ""
        shape = f"{_plural(len(suite), 'case')} x {_plural(n_trials, 'trial')}"
        console.print(
            f"[bold]tether eval[/] {what}suite [cyan]{escape(suite.name)}[/] ({shape}) "
            f"on [cyan]{escape(version.name)}[/]"
            + (f" · budget ${budget_usd}" if budget_usd is not None else "")
            + (f" · {runner.cassette.mode} {escape(str(runner.cassette.path))}" if runner.cassette else "")
        )
        console.print(
            f"[dim]traces →[/] {escape(parse_store_url(url).display)}"
            + (" + OTLP" if "otlp" in tracing.exporters else "")
        )
        seen = _Seen()
        try:
            outcome = _with_progress(
                console,
                seen,
                lambda on_start, on_trial: _closing(
                    runner.run(
                        suite,
                        version,
                        trials=n_trials,
                        k=chosen,
                        max_concurrency=max_concurrency,
                        budget_usd=budget_usd,
                        seed=seed,
                        resume=prior.eval_id if prior is not None else None,
                        on_trial=on_trial,
                        on_start=on_start,
                    ),
                    gateway,
                ),
            )
        except KeyboardInterrupt:
            if seen.record is None:
                console.print("[yellow]interrupted before the eval began: nothing was stored[/]")
            else:
                again = _resume_command(suite_ref, agent_ref, seen.record.eval_id, database)
                console.print(
                    f"[bold yellow]interrupted:[/] eval [cyan]{seen.record.eval_id}[/] is stored as interrupted "
                    f"with {seen.done} of {seen.planned} trials done. Resume it with: [bold]{escape(again)}[/]",
                    soft_wrap=True,
                )
            raise typer.Exit(130) from None
        finally:
            tracing.flush()
            tracing.shutdown()
            if runner.cassette is not None:
                runner.cassette.close()

        summary = summarize(outcome.record, outcome.trials, ks=chosen)
        comparison: Comparison | None = None
        verdict: GateResult | None = None
        if baseline is not None:
            comparison = compare(
                (baseline, evals.trials(baseline.eval_id)), (outcome.record, outcome.trials), ks=chosen, alpha=alpha
            )
            verdict = gate(comparison, floor=floor)
        other = baseline.eval_id if baseline is not None else _other_eval(evals, outcome.record)
    finally:
        store.close()

    if as_json:
        extra: dict[str, Any] = {
            "not_run": outcome.not_run,
            "spent_usd": None if outcome.spent_usd is None else str(outcome.spent_usd),
        }
        if verdict is not None and baseline is not None:
            extra["gate"] = {**verdict.to_dict(), "baseline": baseline.eval_id}
        typer.echo(export.summary_json(summary, extra))
    else:
        _print_summary(console, summary, cases=len(suite))
    if junit is not None:
        _write(console, junit, export.junit_xml(summary, outcome.trials), "JUnit XML")
    if markdown is not None:
        text = export.summary_markdown(summary)
        if comparison is not None:
            text += "\n" + export.comparison_markdown(comparison, verdict)
        _write(console, markdown, text, "Markdown report")
    if outcome.not_run:
        _print_not_run(
            console,
            outcome,
            budget_usd,
            lambda *extra_args: _resume_command(suite_ref, agent_ref, outcome.record.eval_id, database, *extra_args),
        )
    if verdict is not None:
        console.print(f"[bold {'green' if verdict.passed else 'red'}]{escape(verdict.message)}[/]", soft_wrap=True)
    if not as_json:
        _print_next(console, outcome.record, outcome.trials, other)
    if verdict is not None and not verdict.passed:
        raise typer.Exit(1)


# --- tether eval list / show --------------------------------------------------------------------------------------


@app.command("list")
def list_evals(
    suite: Annotated[str | None, typer.Option(help="only evals of this suite")] = None,
    agent: Annotated[str | None, typer.Option(help="only evals of this agent version")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many evals")] = 20,
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """List evals, newest first: id, suite, version, status, trials per case, pass rate, started."""
    from tether.evals import export

    with _evals(database) as evals:
        found = [(r, evals.trials(r.eval_id)) for r in evals.list(suite=suite, agent_version=agent, limit=limit)]
    rows: list[tuple[EvalRecord, int, int, int]] = []
    for record, stored in found:
        scored = [t for t in stored if t.counted]
        rows.append((record, len(scored), sum(1 for t in scored if t.passed), len(stored) - len(scored)))
    if as_json:
        typer.echo(
            export.to_json(
                [
                    {
                        **record.to_dict(),
                        "counted_trials": counted,
                        "passes": passes,
                        "infra_errors": infra,
                        "pass_rate": passes / counted if counted else None,
                    }
                    for record, counted, passes, infra in rows
                ]
            )
        )
        return
    console = fmt.console()
    if not rows:
        console.print("no evals recorded yet: try [bold]tether eval run SUITE --agent module:version[/]")
        return
    table = Table(title=f"{len(rows)} eval{'s' if len(rows) != 1 else ''}, newest first", title_justify="left",
                  header_style="bold")  # fmt: skip
    table.add_column("eval", style="cyan", no_wrap=True)
    table.add_column("suite", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("trials/case", justify="right", no_wrap=True)
    table.add_column("pass rate", justify="right", no_wrap=True)
    table.add_column("infra", justify="right", no_wrap=True)
    table.add_column("started", style="dim", no_wrap=True)
    for record, counted, passes, infra in rows:
        rate = passes / counted if counted else None
        table.add_row(
            record.eval_id,
            escape(record.suite),
            escape(record.agent_version),
            _status(record.status),
            str(record.trials),
            f"[{_rate_style(rate)}]{export.percent(rate)}[/] [dim]{passes}/{counted}[/]",
            f"[yellow]{infra}[/]" if infra else "[dim]0[/]",
            record.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    console.print("[dim]show one:[/] tether eval show EVAL_ID   [dim](a unique prefix is enough)[/]")


@app.command("show")
def show(
    eval_id: Annotated[str, typer.Argument(help="eval id, or a unique prefix of it")],
    list_trials: Annotated[bool, typer.Option("--trials", help="also list every trial")] = False,
    as_json: JsonOption = False,
    markdown: MarkdownOption = None,
    junit: JunitOption = None,
    database: DatabaseOption = None,
) -> None:
    """Show one eval: pass rate, pass@k and pass^k with intervals, flaky cases, cost, latency, and every case."""
    from tether.evals import export
    from tether.evals.report import summarize

    with _evals(database) as evals:
        record = evals.get(eval_id)
        trials = evals.trials(record.eval_id)
        other = _other_eval(evals, record)
    summary = summarize(record, trials)
    console = fmt.console(stderr=as_json)
    if as_json:
        extra = {"trial_records": [t.to_dict() for t in trials]} if list_trials else None
        typer.echo(export.summary_json(summary, extra))
    else:
        _print_summary(console, summary)
        if list_trials:
            _print_trials(console, trials)
    if junit is not None:
        _write(console, junit, export.junit_xml(summary, trials), "JUnit XML")
    if markdown is not None:
        _write(console, markdown, export.summary_markdown(summary), "Markdown report")
    if as_json:
        return
    if record.status != "finished":
        console.print(
            f"[yellow]this eval is {escape(record.status)}: trials it planned may be missing;[/] run them with "
            f"[bold]tether eval run SUITE --agent REF --resume {record.eval_id}[/]",
            soft_wrap=True,
        )
    _print_next(console, record, trials, other, listed=list_trials)


# --- tether eval compare ------------------------------------------------------------------------------------------


def _print_comparison(console: Console, comparison: Comparison) -> None:
    from tether.evals import export

    base, cand = comparison.baseline, comparison.candidate
    console.print(
        f"suite [cyan]{escape(base.record.suite)}[/]: baseline [bold]{escape(base.record.agent_version)}[/] "
        f"[dim]({base.record.eval_id})[/] → candidate [bold]{escape(cand.record.agent_version)}[/] "
        f"[dim]({cand.record.eval_id})[/]"
    )
    if comparison.suite_changed:
        console.print("[bold yellow]the suite's cases or checks changed between these evals: read with care[/]")
    alpha = comparison.alpha
    table = Table(title="paired, case by case (candidate - baseline)", title_justify="left", header_style="bold")
    table.add_column("metric", style="bold", no_wrap=True)
    table.add_column("baseline", justify="right", no_wrap=True)
    table.add_column("candidate", justify="right", no_wrap=True)
    table.add_column("difference", justify="right", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    table.add_column("test", style="dim", no_wrap=True)
    diff = comparison.pass_rate
    table.add_row(
        "pass rate",
        _rate(base.pass_rate),
        _rate(cand.pass_rate),
        _difference(diff),
        _p(diff.p_value, alpha),
        escape(diff.method),
    )
    for k, hat in comparison.pass_hat_k.items():
        table.add_row(
            f"pass^{k}",
            _rate(base.pass_hat_k.get(k)),
            _rate(cand.pass_hat_k.get(k)),
            _difference(hat),
            _p(hat.p_value, alpha),
            escape(hat.method),
        )
    for k in comparison.pass_hat_k:
        table.add_row(f"pass@{k}", _rate(base.pass_at_k.get(k)), _rate(cand.pass_at_k.get(k)), "", "", "")
    both, base_only, cand_only, neither = comparison.paired
    table.add_row(
        "paired trials",
        f"{base_only} passed only here",
        f"{cand_only} passed only here",
        f"[dim]both passed {both}, both failed {neither}[/]",
        _p(comparison.mcnemar_p, alpha),
        "McNemar exact",
    )
    table.add_row("mean score", _rate(base.mean_score), _rate(cand.mean_score), "", "", "")
    table.add_row("cost per trial", _usd(base.cost_per_trial_usd), _usd(cand.cost_per_trial_usd), "", "", "")
    table.add_row("p95 duration", _seconds(base.duration_p95_s), _seconds(cand.duration_p95_s), "", "", "")
    console.print(table)
    for title, changes, colour in (
        ("regressed cases", comparison.regressions, "red"),
        ("improved cases", comparison.improvements, "green"),
    ):
        if not changes:
            continue
        cases = Table(title=title, title_justify="left", header_style="bold")
        cases.add_column("case", style="cyan", no_wrap=True)
        for column in ("baseline", "candidate", "change", "p (Fisher)"):
            cases.add_column(column, justify="right", no_wrap=True)
        for c in changes:
            cases.add_row(
                escape(c.case_id),
                f"{export.percent(c.baseline_rate)} [dim]{c.baseline_passes}/{c.baseline_trials}[/]",
                f"{export.percent(c.candidate_rate)} [dim]{c.candidate_passes}/{c.candidate_trials}[/]",
                f"[{colour}]{'n/a' if c.delta is None else f'{c.delta * 100:+.1f} pts'}[/]",
                _p(c.p_value, alpha),
            )
        console.print(cases)
    for label, ids in (("only in the baseline", comparison.only_in_baseline),
                       ("only in the candidate", comparison.only_in_candidate)):  # fmt: skip
        if ids:
            console.print(f"[yellow]cases {label}:[/] " + escape(", ".join(ids)))


def _verdict_line(comparison: Comparison) -> str:
    from tether.evals import export

    p = f"McNemar p={export.p_text(comparison.mcnemar_p)}, alpha {comparison.alpha:g}"
    if comparison.significant_regression:
        return f"[bold red]significant regression[/] ({p})"
    if comparison.significant_improvement:
        return f"[bold green]significant improvement[/] ({p})"
    return f"no significant difference ({p})"


@app.command("compare")
def compare_cmd(
    baseline_id: Annotated[str, typer.Argument(metavar="BASELINE", help="the reference eval (id or unique prefix)")],
    candidate_id: Annotated[str, typer.Argument(metavar="CANDIDATE", help="the eval under test")],
    k: KOption = None,
    alpha: AlphaOption = 0.05,
    floor: FloorOption = None,
    as_json: JsonOption = False,
    markdown: MarkdownOption = None,
    gate_flag: Annotated[
        bool, typer.Option("--gate", help="exit 1 on a significant regression (or below --floor), with one line")
    ] = False,
    database: DatabaseOption = None,
) -> None:
    """Compare two evals of one suite, paired per case: McNemar exact and a paired bootstrap, regressed cases."""
    from tether.evals import export
    from tether.evals.compare import compare, gate

    ks = _parse_ks(k) if k is not None else None
    with _evals(database) as evals:
        baseline, candidate = evals.get(baseline_id), evals.get(candidate_id)
        comparison = compare(
            (baseline, evals.trials(baseline.eval_id)), (candidate, evals.trials(candidate.eval_id)), ks=ks, alpha=alpha
        )
    gating = gate_flag or floor is not None
    verdict = gate(comparison, floor=floor) if gating else None
    console = fmt.console(stderr=as_json)
    if markdown is not None:
        _write(console, markdown, export.comparison_markdown(comparison, verdict), "Markdown report")
    if as_json:
        typer.echo(export.comparison_json(comparison, verdict))
    else:
        _print_comparison(console, comparison)
        console.print(_verdict_line(comparison))
    if verdict is not None:
        console.print(f"[bold {'green' if verdict.passed else 'red'}]{escape(verdict.message)}[/]", soft_wrap=True)
        if gate_flag and not verdict.passed:
            raise typer.Exit(1)


# --- tether eval scorecard ----------------------------------------------------------------------------------------


def _print_scorecard(console: Console, card: Scorecard) -> None:
    from tether.evals import export

    table = Table(title="safety scorecard (95% Wilson intervals)", title_justify="left", header_style="bold")
    table.add_column("metric", overflow="fold", max_width=48)
    for version in card.versions:
        table.add_column(f"{escape(version)}\n[dim]{card.evals[version]}[/]", justify="right", no_wrap=True)
    for row in card.rows:
        known = {v: i.estimate for v, i in row.values.items() if i is not None}
        best = worst = None
        if len(known) > 1 and len(set(known.values())) > 1:
            pick = max if row.better == "higher" else min
            other = min if row.better == "higher" else max
            best, worst = pick(known.values()), other(known.values())
        cells = []
        for version in card.versions:
            value = row.values.get(version)
            num, den = row.counts.get(version, (0, 0))
            if value is None:
                cells.append("[dim]n/a (nothing to count)[/]")
                continue
            style = "green" if value.estimate == best else "red" if value.estimate == worst else "white"
            cells.append(f"[{style}]{escape(export.interval_text(value))}[/] [dim]{num}/{den}[/]")
        arrow = "↑" if row.better == "higher" else "↓"
        table.add_row(f"[bold]{escape(row.label)}[/] [dim]{arrow} better\n{escape(row.description)}[/]", *cells)
    console.print(table)


@app.command("scorecard")
def scorecard_cmd(
    eval_ids: Annotated[list[str], typer.Argument(metavar="EVAL_ID...", help="one eval per agent version")],
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """The safety scorecard: agent versions side by side, one row per safety metric, with intervals."""
    from tether.evals import export
    from tether.evals.scorecard import scorecard

    with _evals(database) as evals:
        records = [evals.get(eval_id) for eval_id in eval_ids]
        card = scorecard([(r, evals.trials(r.eval_id)) for r in records])
    if as_json:
        typer.echo(export.to_json(card.to_dict()))
        return
    _print_scorecard(fmt.console(), card)


# --- tether eval drift --------------------------------------------------------------------------------------------


def _print_drift(console: Console, report: DriftReport) -> None:
    from tether.evals import export

    console.print(
        f"suite [cyan]{escape(report.suite)}[/] on [bold]{escape(report.agent_version or 'several versions')}[/]: "
        f"recent eval [cyan]{report.recent_eval}[/] against the {len(report.baseline_evals)} eval(s) before it "
        f"[dim]({', '.join(report.baseline_evals)})[/]"
    )
    table = Table(title="drift (p adjusted with Benjamini-Hochberg)", title_justify="left", header_style="bold")
    table.add_column("metric", style="bold", no_wrap=True, min_width=16)
    table.add_column("baseline", overflow="fold", max_width=36)
    table.add_column("recent", overflow="fold", max_width=36)
    table.add_column("test", style="dim", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    table.add_column("adjusted p", justify="right", no_wrap=True)
    table.add_column("changed", no_wrap=True)
    table.add_column("note", style="dim", overflow="fold")
    for m in report.metrics:
        table.add_row(
            escape(m.name),
            escape(m.baseline),
            escape(m.recent),
            escape(m.method),
            export.p_text(m.p_value),
            _p(m.adjusted_p, report.alpha),
            "[bold red]changed[/]" if m.changed else "[green]no[/]" if m.p_value is not None else "[dim]untested[/]",
            escape(m.note),
        )
    console.print(table)
    if report.model_changed:
        console.print(
            "[bold yellow]the model ids changed:[/] "
            + escape(", ".join(report.models_baseline) or "none")
            + " → "
            + escape(", ".join(report.models_recent) or "none")
        )
    elif report.models_recent:
        console.print(f"[dim]models (unchanged): {escape(', '.join(report.models_recent))}[/]")
    changed = [m.name for m in report.metrics if m.changed]
    if changed:
        console.print(f"[bold red]drifted:[/] {escape(', '.join(changed))} (adjusted p < {report.alpha:g})")
    else:
        console.print(f"[green]no drift detected[/] [dim](adjusted p >= {report.alpha:g} for every metric)[/]")


def _print_no_baseline(suite: str, version: str | None, recent: str | None, *, as_json: bool) -> None:
    """Say that there is nothing to compare yet: drift needs the latest eval and at least one before it."""
    from tether.evals import export

    on = f" on {version!r}" if version is not None else ""
    found = f"only eval {recent}" if recent is not None else "no finished eval"
    note = f"no baseline yet: suite {suite!r}{on} has {found}; run it again with `tether eval run` to compare"
    if as_json:
        data: dict[str, object] = {
            "suite": suite,
            "agent_version": version,
            "recent_eval": recent,
            "baseline_evals": [],
            "metrics": [],
            "drifted": False,
            "note": note,
        }
        typer.echo(export.to_json(data))
        return
    fmt.console().print(escape(note))


@app.command("drift")
def drift_cmd(
    suite_name: Annotated[
        str, typer.Argument(metavar="SUITE_NAME", help="the suite's name (as tether eval list shows)")
    ],
    agent: Annotated[
        str | None, typer.Option(help="the agent version (default: the one of the suite's latest eval)")
    ] = None,
    window: Annotated[
        int, typer.Option(min=1, max=1000, help="evals before the latest one that make the baseline")
    ] = 5,
    alpha: AlphaOption = 0.05,
    as_json: JsonOption = False,
    database: DatabaseOption = None,
) -> None:
    """Has the latest eval of a suite drifted from the ones before it? A report: exit 0 either way."""
    from tether.evals import export
    from tether.evals.drift import drift

    with _evals(database) as evals:
        history = evals.history(suite_name, agent, limit=max(50, 2 * window + 2))
        if not history:
            _print_no_baseline(suite_name, agent, None, as_json=as_json)
            return
        version = agent or history[-1].agent_version
        history = [r for r in history if r.agent_version == version][-(window + 1) :]
        if len(history) < 2:
            _print_no_baseline(suite_name, version, history[-1].eval_id, as_json=as_json)
            return
        report = drift([(r, evals.trials(r.eval_id)) for r in history], window=window, alpha=alpha)
    if as_json:
        typer.echo(export.to_json(report.to_dict()))
        return
    console = fmt.console()
    if agent is None:
        console.print(f"[dim]agent version {escape(version)}: the latest eval's (choose with --agent)[/]")
    _print_drift(console, report)
