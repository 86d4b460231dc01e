"""The guard's vocabulary: risks, verdicts, decisions and detector findings.

Every tool call crosses the guard before it runs (never alongside it), and the
guard fails closed: no decision, no call. A ``Decision`` says what happened and
why; ``Finding`` is what a detector saw in text the agent ingested (tool
output, retrieved content) or in a call it tried to make.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

__all__ = ["Decision", "Detector", "Finding", "Risk", "Severity", "Verdict"]

#: What a tool does to the world: ``read`` (nothing), ``write`` (changes it, can be undone),
#: ``irreversible`` (cannot be undone: a payment, a deletion, a production restart).
Risk = Literal["read", "write", "irreversible"]
Severity = Literal["low", "medium", "high"]


class Verdict(StrEnum):
    """A guard decision, as recorded on the tool span and in the audit table."""

    ALLOWED = "allowed"
    DENIED = "denied"
    NEEDS_APPROVAL = "needs_approval"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a detector saw.

    Attributes:
        detector: which detector (``rules``, a classifier's name…).
        kind: what it is: ``prompt_injection``, ``role_marker``, ``hidden_characters``,
            ``exfiltration``, ``hallucinated_tool``, ``invalid_arguments``, ``policy_violation``…
        severity: ``low``, ``medium`` or ``high``.
        message: one line for a person.
        evidence: the text that triggered it, capped (never a secret: it is scrubbed before it is kept).
        start: where the evidence starts in the scanned text, if it came from one.
        end: where it ends.
    """

    detector: str
    kind: str
    severity: Severity
    message: str
    evidence: str = ""
    start: int | None = None
    end: int | None = None


class Detector(Protocol):
    """Scans text an agent ingests; a classifier plugs in by implementing this."""

    name: str

    def scan(self, text: str, *, source: str) -> list[Finding]:
        """Findings in ``text`` (``source`` says where it came from, e.g. ``tool:fetch_page``)."""
        ...


@dataclass(frozen=True, slots=True)
class Decision:
    """The guard's answer for one tool call.

    Attributes:
        verdict: allowed, denied or needs approval (approved / rejected once a person decided).
        reason: why, in one line the model and an operator can both read.
        rule: the policy rule that decided, e.g. ``agents.oncall.tools.restart_service``; None for defaults.
        findings: what detectors or checks saw on the way.
    """

    verdict: Verdict
    reason: str
    rule: str | None = None
    findings: tuple[Finding, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.verdict in (Verdict.ALLOWED, Verdict.APPROVED)
