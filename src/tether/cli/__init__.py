"""The ``tether`` command: one Typer sub-app per command group, errors in one readable line.

Start-up is kept short: the command modules import at module level only what declaring their
commands needs (Typer, Rich, ``tether.errors``), and everything else — the store and SQLAlchemy,
the gateway's proxy and uvicorn, the evals — inside the command that uses it, so ``tether --help``
or ``tether kill`` in the middle of an incident does not wait for the rest of tether to load.
``tests/cli/test_startup.py`` keeps it so.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tether.cli import approvals as approvals_cmd
from tether.cli import config as config_cmd
from tether.cli import cost as cost_cmd
from tether.cli import evals as evals_cmd
from tether.cli import gateway as gateway_cmd
from tether.cli import incidents as incidents_cmd
from tether.cli import keys as keys_cmd
from tether.cli import kill as kill_cmd
from tether.cli import runs as runs_cmd
from tether.cli import serve as serve_cmd
from tether.cli import worker as worker_cmd
from tether.cli import workers as workers_cmd
from tether.cli.demo import demo
from tether.errors import TetherError

__all__ = ["app", "main"]

app = typer.Typer(
    name="tether",
    help="tether — the control plane for LLM agents: traced, budgeted, bounded, evaluated runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click passes help_option_names down to every sub-command's context, so -h works everywhere.
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"tether {version('tether')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option("--version", help="print tether's version and exit", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """tether — the control plane for LLM agents: traced, budgeted, bounded, evaluated runs."""


app.add_typer(runs_cmd.app, name="runs")
app.command("serve")(serve_cmd.serve)
app.add_typer(gateway_cmd.app, name="gateway")
app.command("demo")(demo)
app.add_typer(keys_cmd.app, name="keys")
app.command("cost")(cost_cmd.cost)
app.command("kill")(kill_cmd.kill)
app.add_typer(approvals_cmd.app, name="approvals")
app.add_typer(incidents_cmd.app, name="incidents")
app.add_typer(evals_cmd.app, name="eval")
app.add_typer(config_cmd.app, name="config")
app.command("worker")(worker_cmd.worker)
app.command("workers")(workers_cmd.workers)


def main() -> None:
    """Entry point: run the CLI, turning tether's own errors into one red line and exit code 2."""
    try:
        app()
    except TetherError as exc:
        # escape: messages name TOML tables like [routes.x], which Rich would take for markup.
        from tether.redaction import default_scrubber

        message = default_scrubber().scrub(str(exc))
        Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)
