"""Budget periods: UTC calendar days (``"2026-11-21"``), months (``"2026-11"``) or ``"all"``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

#: The period key of a budget without a period.
LIFETIME: Final = "all"


def _utc(moment: datetime) -> datetime:
    # Naive datetimes mean UTC, as everywhere in the store.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def period_key(period: Literal["day", "month"] | None, at: datetime) -> str:
    """The key of the period containing ``at``: ``"2026-11-21"``, ``"2026-11"`` or ``"all"``."""
    if period is None:
        return LIFETIME
    moment = _utc(at)
    if period == "day":
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    return f"{moment.year:04d}-{moment.month:02d}"
