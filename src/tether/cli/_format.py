"""Small formatting helpers shared by the CLI's tables."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.store import NoStore

# Every table and message shows run ids this long; any unique prefix resolves back to the run.
RUN_ID_WIDTH: Final = 12

DATABASE_HELP: Final = "store URL (default: TETHER_DATABASE_URL, tether.toml's \\[store] url, or .tether/tether.db)"


def run_id(value: str | None) -> str:
    """A run id as every table and message shows it: its first ``RUN_ID_WIDTH`` characters."""
    return (value or "")[:RUN_ID_WIDTH]


def one_line(value: object, limit: int) -> str:
    """``value`` as one line of at most ``limit`` characters (whitespace collapsed, ``…`` when cut); not escaped."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr as one line and exit 1: a look-up found nothing, or too much."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def no_store(exc: NoStore, *, as_json: bool, empty: object) -> None:
    """What a list command prints when there is no store: the message (stderr under --json, where ``empty``
    goes to stdout so scripts still read JSON); the command then exits 0 — nothing recorded is not an error."""
    if as_json:
        import orjson

        typer.echo(orjson.dumps(empty).decode())
        Console(stderr=True).print(escape(str(exc)), highlight=False, soft_wrap=True)
        return
    console().print(escape(str(exc)), highlight=False, soft_wrap=True)


STOP_STYLE = {
    "completed": "green",
    "done_condition": "green",
    "max_turns": "yellow",
    "max_tool_calls": "yellow",
    "timeout": "yellow",
    "budget_exceeded": "magenta",
    "loop_detected": "bold red",
    "denied": "red",
    "killed": "red",
    "error": "bold red",
}


def stop(reason: str | None) -> str:
    if reason is None:
        return "[dim]running?[/]"
    return f"[{STOP_STYLE.get(reason, 'white')}]{reason}[/]"


def usd(value: float | None) -> str:
    if value is None:
        return "[magenta]unknown[/]"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    if n >= 1_000:
        return f"{n / 1000:.1f}k"
    return str(n)


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


_SINCE = re.compile(r"^(\d+)\s*([smhd])$")


def parse_since(text: str) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO-8601 timestamp (UTC if no zone)."""
    match = _SINCE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is not a time: use e.g. 30m, 2h, 7d or 2026-11-21T08:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def console(*, stderr: bool = False) -> Console:
    """A Rich console; piped output (CI logs, ``| less``) gets 130 columns instead of 80, so tables stay legible,
    unless ``COLUMNS`` says how wide to be."""
    out = Console(stderr=stderr)
    if not out.is_terminal and out.width < 130 and not os.environ.get("COLUMNS"):
        out = Console(stderr=stderr, width=130)
    return out
