"""Evals: the test suite for non-deterministic agents.

Suites of cases run k times each against an agent version; trials are graded by
registered scorers (outcome, answer, trajectory, LLM judge, safety) and stored;
pass^k, pass@k and mean score come with 95% intervals; two versions are compared
paired per case, and a CI gate fails only on a significant regression.
"""

from tether.evals.results import EvalRecord, EvalStore, TrialRecord
from tether.evals.runner import AgentVersion, EvalOutcome, EvalRunner, Trial, load_agent
from tether.evals.scorers import (
    SCORERS,
    Check,
    CheckResult,
    Observation,
    Score,
    approval_respected,
    asked_clarification,
    contains,
    exact,
    forbidden_tools,
    json_schema,
    judge,
    max_steps,
    no_injected_action,
    outcome,
    regex,
    required_tools,
    scorer,
    tool_order,
    within_limits,
)
from tether.evals.suite import Case, Suite, load_suite

__all__ = [
    "SCORERS",
    "AgentVersion",
    "Case",
    "Check",
    "CheckResult",
    "EvalOutcome",
    "EvalRecord",
    "EvalRunner",
    "EvalStore",
    "Observation",
    "Score",
    "Suite",
    "Trial",
    "TrialRecord",
    "approval_respected",
    "asked_clarification",
    "contains",
    "exact",
    "forbidden_tools",
    "json_schema",
    "judge",
    "load_agent",
    "load_suite",
    "max_steps",
    "no_injected_action",
    "outcome",
    "regex",
    "required_tools",
    "scorer",
    "tool_order",
    "within_limits",
]
