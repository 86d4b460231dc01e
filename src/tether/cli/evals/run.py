"""``tether eval run``: run a suite against an agent version, k trials per case."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tether.cli import _format as fmt
from tether.cli.evals.cells import _plural
from tether.cli.evals.options import (
    DEFAULT_TRIALS,
    AlphaOption,
    DatabaseOption,
    FloorOption,
    JsonOption,
    JunitOption,
    KOption,
    MarkdownOption,
    _parse_ks,
)
from tether.cli.evals.report import _other_eval, _print_next, _print_summary, _write
from tether.errors import ConfigError, UserError

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.compare import Comparison, GateResult
    from tether.evals.results import EvalRecord, TrialRecord
    from tether.evals.runner import EvalOutcome, EvalProgress
    from tether.gateway.gateway import Gateway
    from tether.models.base import Model


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


def run_cmd(
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
