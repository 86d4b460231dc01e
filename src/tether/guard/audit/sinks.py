"""What the recorder queues on the run's path, and the sinks that write it as rows in the writer's thread."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from tether.guard.audit.incident import COUNTED_SEVERITIES, OPEN
from tether.guard.audit.rows import _ARGUMENTS_CHARS, _EVIDENCE_CHARS, _REASON_CHARS, _SUMMARY_CHARS, _text
from tether.guard.audit.store import GuardStore
from tether.guard.types import Finding
from tether.redaction import Scrubber

if TYPE_CHECKING:
    from tether.guard.audit.quarantine import Quarantine
    from tether.guard.policy import Policy


class IncidentOwner(Protocol):
    """What the incident sink needs of its recorder (``StoreGuardRecorder``): where to write, and whom to tell."""

    store: GuardStore
    scrubber: Scrubber
    policy: Policy

    def _settled(self, agent: str, found: Quarantine | None, ids: set[str]) -> None: ...


def _span_ids(span: Any) -> tuple[str | None, str | None]:
    """The span's trace and span ids in hex, or None for a span that is not recorded (or not a span)."""
    try:
        if span is None or not span.is_recording():
            return None, None
        context = span.get_span_context()
        if not context.is_valid:
            return None, None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")
    except Exception:  # anything that is not an OpenTelemetry span: no ids, never an error in the run
        return None, None


def _json_arguments(arguments: Mapping[str, Any]) -> str:
    try:
        return orjson.dumps(
            dict(arguments), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str
        ).decode()
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps({"_unserializable": repr(arguments)}).decode()


def _cap_json(text: str) -> str:
    # Cut after scrubbing (a cut secret would no longer be recognised), and keep the column valid JSON.
    if len(text) <= _ARGUMENTS_CHARS:
        return text
    return orjson.dumps({"_truncated": text[: _ARGUMENTS_CHARS - 32]}).decode()


@dataclass(frozen=True, slots=True)
class _Decided:
    """A decision as queued on the run's path; it becomes a row in the writer's thread."""

    id: str
    time_ns: int
    run_id: str
    agent: str
    tool: str
    call_id: str
    decision: str
    reason: str
    rule: str | None
    arguments: str  # serialised on the run's path: the audit keeps the arguments as they were when decided
    trace_id: str | None
    span_id: str | None


@dataclass(frozen=True, slots=True)
class _Found:
    """A finding as queued on the run's path."""

    id: str
    created_at: datetime
    run_id: str
    agent: str
    tool: str | None
    finding: Finding
    trace_id: str | None
    span_id: str | None

    @property
    def counted(self) -> bool:
        return self.finding.severity in COUNTED_SEVERITIES


class _AuditSink:
    """Scrubs decisions into ``guard_audit`` rows in the writer's thread."""

    def __init__(self, store: GuardStore, scrubber: Scrubber) -> None:
        self.store = store
        self.scrubber = scrubber

    @property
    def url(self) -> str:
        return self.store.url

    def write_rows(self, entries: Sequence[_Decided], /) -> None:
        scrub = self.scrubber.scrub
        self.store.write_audit(
            [
                {
                    "id": e.id,
                    "time_ns": e.time_ns,
                    "run_id": _text(e.run_id),
                    "agent": _text(e.agent),
                    "tool": _text(e.tool),
                    "call_id": _text(e.call_id),
                    "decision": e.decision[:24],
                    "reason": _text(scrub(e.reason), _REASON_CHARS),
                    "rule": _text(e.rule) if e.rule is not None else None,
                    "arguments": _text(_cap_json(scrub(e.arguments))),
                    "trace_id": e.trace_id,
                    "span_id": e.span_id,
                }
                for e in entries
            ]
        )


class _IncidentSink:
    """Stores incidents, then decides quarantines from the store's count (in the writer's thread)."""

    def __init__(self, recorder: IncidentOwner) -> None:
        self.recorder = recorder

    @property
    def url(self) -> str:
        return self.recorder.store.url

    def write_rows(self, entries: Sequence[_Found], /) -> None:
        recorder = self.recorder
        scrub = recorder.scrubber.scrub
        rows = [
            {
                "id": e.id,
                "created_at": e.created_at,
                # Bounded columns: a value too long for PostgreSQL's VARCHAR would fail the batch forever.
                "severity": e.finding.severity[:8],
                "kind": _text(e.finding.kind)[:32],
                "run_id": _text(e.run_id),
                "agent": _text(e.agent),
                "tool": _text(e.tool) if e.tool is not None else None,
                "summary": _text(scrub(e.finding.message), _SUMMARY_CHARS),
                "evidence": _text(scrub(e.finding.evidence), _EVIDENCE_CHARS) or None,
                "trace_id": e.trace_id,
                "span_id": e.span_id,
                "status": OPEN,
            }
            for e in entries
        ]
        # First commit the incidents, then count in a new transaction: see tether.guard.audit. A failure
        # of either step raises, the whole batch is retried, and the insert-or-ignore makes the retry harmless.
        recorder.store.write_incidents(rows)
        policy = recorder.policy
        for agent in dict.fromkeys(e.agent for e in entries if e.counted):
            found = recorder.store.quarantine_if_due(
                agent, after=policy.quarantine_after, window_s=policy.quarantine_window_s
            )
            recorder._settled(agent, found, {e.id for e in entries if e.agent == agent})
