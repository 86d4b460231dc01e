"""The options the ``tether eval`` commands share, and how their values are parsed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.errors import ConfigError

DatabaseOption = Annotated[
    str | None, typer.Option(help="store URL (default: TETHER_DATABASE_URL or .tether/tether.db)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts (progress and notes go to stderr)")]
KOption = Annotated[
    str | None, typer.Option("--k", metavar="K,...", help="k values for pass@k and pass^k, comma-separated, e.g. 1,3")
]
AlphaOption = Annotated[float, typer.Option(min=0.0001, max=0.5, help="significance level of the paired tests")]
FloorOption = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="the gate also fails when the candidate's pass rate is below this"),
]
MarkdownOption = Annotated[
    Path | None, typer.Option(metavar="PATH", help="also write the report as Markdown (e.g. for a PR comment)")
]
JunitOption = Annotated[
    Path | None, typer.Option(metavar="PATH", help="also write JUnit XML for CI (one test per trial)")
]

DEFAULT_TRIALS = 5


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"--k {text!r} is not a list of whole numbers: write e.g. --k 1,3") from None
    if not values:
        raise ConfigError("--k is empty: write e.g. --k 1,3")
    return values
