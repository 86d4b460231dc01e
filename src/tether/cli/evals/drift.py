"""``tether eval drift``: has the latest eval of a suite drifted from the ones before it?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt
from tether.cli.evals.cells import _p
from tether.cli.evals.options import AlphaOption, DatabaseOption, JsonOption
from tether.cli.evals.store import _evals

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.drift import DriftReport


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
