"""``tether eval scorecard``: the safety scorecard of agent versions side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt
from tether.cli.evals.options import DatabaseOption, JsonOption
from tether.cli.evals.store import _evals

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.scorecard import Scorecard


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
