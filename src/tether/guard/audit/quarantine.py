"""Quarantine: ``Quarantine``, ``Release``, ``NotQuarantined`` and the reason a quarantine gives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tether.errors import UserError


class NotQuarantined(UserError):
    """The agent is not quarantined: there is nothing to release."""


@dataclass(frozen=True, slots=True)
class Quarantine:
    """An agent's quarantine: while active, its write and irreversible tools are denied."""

    agent: str
    reason: str
    since: datetime
    released_at: datetime | None
    released_by: str | None

    @property
    def active(self) -> bool:
        return self.released_at is None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values."""
        return {
            "agent": self.agent,
            "reason": self.reason,
            "since": self.since.isoformat(),
            "active": self.active,
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "released_by": self.released_by,
        }


@dataclass(frozen=True, slots=True)
class Release:
    """What ``release`` did: the quarantine as it is now, and how many open incidents stopped counting."""

    quarantine: Quarantine
    incidents_released: int
    reason: str

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values."""
        return {**self.quarantine.to_dict(), "incidents_released": self.incidents_released, "reason": self.reason}


def _window_text(seconds: float) -> str:
    """``the last hour``, ``the last 10 minutes``, ``the last 90 s``."""
    whole = round(seconds)
    if whole == 3_600:
        return "the last hour"
    if whole == 86_400:
        return "the last day"
    if whole and whole % 3_600 == 0:
        return f"the last {whole // 3_600} hours"
    if whole == 60:
        return "the last minute"
    if whole and whole % 60 == 0:
        return f"the last {whole // 60} minutes"
    return f"the last {seconds:g} s"


def quarantine_reason(kinds: Sequence[str], window_s: float) -> str:
    """``3 incidents in the last hour: prompt_injection, hallucinated_tool (2)`` (kinds in order of first sight)."""
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    listed = ", ".join(kind if n == 1 else f"{kind} ({n})" for kind, n in counts.items())
    return f"{len(kinds)} incidents in {_window_text(window_s)}: {listed}"
