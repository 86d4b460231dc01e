"""Findings kept as incidents: ``Incident`` and its statuses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

#: Severities that count towards a quarantine.
COUNTED_SEVERITIES: Final = ("medium", "high")
OPEN: Final = "open"
RELEASED: Final = "released"


@dataclass(frozen=True, slots=True)
class Incident:
    """A finding as stored: what was seen, in which run of which agent, and whether it still counts.

    Attributes:
        status: ``open`` (counts towards a quarantine) or ``released`` (its agent was released since).
    """

    id: str
    created_at: datetime
    severity: str
    kind: str
    run_id: str
    agent: str
    tool: str | None
    summary: str
    evidence: str | None
    trace_id: str | None
    span_id: str | None
    status: str

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "severity": self.severity,
            "kind": self.kind,
            "run_id": self.run_id,
            "agent": self.agent,
            "tool": self.tool,
            "summary": self.summary,
            "evidence": self.evidence,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "status": self.status,
        }
