"""One eval's report as ``run`` and ``show`` print it: the summary, the trials, what to run next."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt
from tether.cli.evals.cells import _plural, _rate, _rate_style, _seconds, _status, _usd

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.report import EvalSummary
    from tether.evals.results import EvalRecord, EvalStore, TrialRecord


def _write(console: Console, path: Path, text: str, what: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    console.print(f"[dim]{what} written to[/] {escape(str(path))}")


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
