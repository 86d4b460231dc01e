"""``tether eval``: run a suite against an agent version, then read, compare, gate and watch the results.

One module per command (``run.py``, ``listing.py``, ``show.py``, ``compare.py``,
``scorecard.py``, ``drift.py``); what they share: ``options.py``, ``cells.py``
(how values print), ``report.py`` (one eval's report), ``store.py`` (the eval store).
Every command imports ``tether.evals`` and the store when it runs, not here.
"""

import typer

from tether.cli.evals.compare import compare_cmd
from tether.cli.evals.drift import drift_cmd
from tether.cli.evals.listing import list_evals
from tether.cli.evals.run import run_cmd
from tether.cli.evals.scorecard import scorecard_cmd
from tether.cli.evals.show import show_cmd

__all__ = ["app"]

app = typer.Typer(
    help="Evals: run suites k times per case, then show, compare, gate, scorecard and drift.", no_args_is_help=True
)
app.command("run")(run_cmd)
app.command("list")(list_evals)
app.command("show")(show_cmd)
app.command("compare")(compare_cmd)
app.command("scorecard")(scorecard_cmd)
app.command("drift")(drift_cmd)
