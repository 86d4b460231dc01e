"""``tether eval show``: one stored eval's report (Markdown and JUnit XML too)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from tether.cli import _format as fmt
from tether.cli.evals.options import DatabaseOption, JsonOption, JunitOption, MarkdownOption
from tether.cli.evals.report import _other_eval, _print_next, _print_summary, _print_trials, _write
from tether.cli.evals.store import _evals


def show_cmd(
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
