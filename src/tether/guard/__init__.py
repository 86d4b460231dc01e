"""Bounded agency: the boundary every tool call crosses before it runs (issue 4, being built)."""

from tether.guard.types import Decision, Detector, Finding, Risk, Severity, Verdict

__all__ = ["Decision", "Detector", "Finding", "Risk", "Severity", "Verdict"]
