"""The audit trail's rows: ``AuditEntry``, one guard decision on a tool call (or a quarantine's release)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit trail: a guard decision on a tool call (or a quarantine's release).

    Attributes:
        id: unique id.
        time: when it was decided (UTC).
        run_id: the run.
        agent: the agent.
        tool: the tool called.
        call_id: the model's id for the call.
        decision: the verdict (``allowed``, ``denied``, ``needs_approval``, ``approved``, ``rejected``), or
            ``released`` for a person releasing a quarantine.
        reason: why, scrubbed of secrets.
        rule: the policy rule that decided, if one did.
        arguments: the call's arguments as sorted-keys JSON, scrubbed and capped.
        trace_id: the tool span's trace id (hex), when the span was recorded.
        span_id: the tool span's id (hex).
    """

    id: str
    time: datetime
    run_id: str
    agent: str
    tool: str
    call_id: str
    decision: str
    reason: str
    rule: str | None
    arguments: str | None
    trace_id: str | None
    span_id: str | None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values."""
        return {
            "id": self.id,
            "time": self.time.isoformat(),
            "run_id": self.run_id,
            "agent": self.agent,
            "tool": self.tool,
            "call_id": self.call_id,
            "decision": self.decision,
            "reason": self.reason,
            "rule": self.rule,
            "arguments": self.arguments,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
        }
