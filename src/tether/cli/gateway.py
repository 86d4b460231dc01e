"""``tether gateway serve``: the older name of ``tether serve`` (same options; see ``tether.cli.serve``)."""

from __future__ import annotations

import typer

from tether.cli.serve import serve

app = typer.Typer(help="Run tether's gateway as an HTTP proxy for agents not built with tether.", no_args_is_help=True)
app.command("serve")(serve)
