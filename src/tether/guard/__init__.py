"""Bounded agency: the boundary every tool call crosses before it runs.

Policy with argument constraints and provenance (``policy``), the guard's decision per call (``guard``),
approvals by a person (``approvals``), scoped credentials (``credentials``), the kill switch
(``killswitch``), injection detection (``detectors``), the audit, incidents and quarantine (``audit``)
and durable runs with an exactly-once tool ledger (``durable``). ``tether.open()`` wires them for each
agent; this package exports the shared vocabulary below.
"""

from tether.guard.types import Decision, Detector, Finding, Risk, Severity, Verdict

__all__ = ["Decision", "Detector", "Finding", "Risk", "Severity", "Verdict"]
