"""``tether eval list``: the stored evals, newest first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt
from tether.cli.evals.cells import _rate_style, _status
from tether.cli.evals.options import DatabaseOption, JsonOption
from tether.cli.evals.store import _evals

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.results import EvalRecord


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
