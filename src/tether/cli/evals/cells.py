"""How the eval tables print a value: rates with intervals, statuses, money, seconds, p-values."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from rich.markup import escape

from tether.cli import _format as fmt

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.stats import Interval, PairedDifference


_STATUS_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "over_budget": "magenta"}


def _rate_style(value: float | None) -> str:
    if value is None:
        return "dim"
    return "green" if value >= 0.9 else "yellow" if value >= 0.6 else "red"


def _rate(value: Interval | None) -> str:
    """A rate with its interval, coloured by how good it is."""
    from tether.evals import export

    if value is None:
        return "[dim]n/a[/]"
    return (
        f"[{_rate_style(value.estimate)}]{export.percent(value.estimate)}[/] "
        f"[dim]({value.low * 100:.1f}-{value.high * 100:.1f}%)[/]"
    )


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


def _usd(value: Decimal | None) -> str:
    return fmt.usd(None if value is None else float(value))


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else fmt.duration(value)


def _difference(value: PairedDifference) -> str:
    from tether.evals import export

    colour = "red" if value.high < 0 else "green" if value.low > 0 else "white"
    return f"[{colour}]{escape(export.difference_text(value))}[/]"


def _p(value: float | None, alpha: float) -> str:
    from tether.evals import export

    text = export.p_text(value)
    return f"[bold]{text}[/]" if value is not None and value < alpha else text


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
