"""Small formatting helpers shared by the CLI's tables."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from rich.console import Console

from tether.errors import ConfigError

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
    """A Rich console; piped output (CI logs, ``| less``) gets 130 columns instead of 80, so tables stay legible."""
    out = Console(stderr=stderr)
    if not out.is_terminal and out.width < 130:
        out = Console(stderr=stderr, width=130)
    return out
