"""``Check`` (a scorer named in a case, with its parameters) and ``CheckResult`` (a check as graded)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Check:
    """A scorer named in a case, with its parameters."""

    scorer: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.scorer


@dataclass(frozen=True)
class CheckResult:
    """A check as graded on one trial (what is stored)."""

    name: str
    scorer: str
    kind: str
    passed: bool
    score: float
    explanation: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scorer": self.scorer,
            "kind": self.kind,
            "passed": self.passed,
            "score": self.score,
            "explanation": self.explanation,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(
            name=data["name"],
            scorer=data["scorer"],
            kind=data["kind"],
            passed=data["passed"],
            score=data["score"],
            explanation=data["explanation"],
            details=data.get("details", {}),
        )
