"""``Score``: one check's verdict on a trial."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Score:
    """One check's verdict: passed or not, a value in [0, 1], why, and details (e.g. judge samples)."""

    passed: bool
    explanation: str = ""
    value: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.value if self.value is not None else (1.0 if self.passed else 0.0)
