"""``tether eval compare``: two evals paired per case, and the CI gate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt
from tether.cli.evals.cells import _difference, _p, _rate, _seconds, _usd
from tether.cli.evals.options import (
    AlphaOption,
    DatabaseOption,
    FloorOption,
    JsonOption,
    KOption,
    MarkdownOption,
    _parse_ks,
)
from tether.cli.evals.report import _write
from tether.cli.evals.store import _evals

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.compare import Comparison


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
